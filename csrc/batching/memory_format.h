// Channels-last memory formats under vmap: each sample gets the layout, the batch dim stays
// outermost.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>

#include "core/layer.h"

namespace functorch_lite {

// The position of `op`'s memory_format argument, if it has one.
std::optional<size_t> memoryFormatArgument(const c10::FunctionSchema& schema);

// When the operator on the stack asks for channels_last or channels_last_3d, replaces that by
// contiguous_format and returns it (NOTE: [Memory formats under vmap]).
std::optional<c10::MemoryFormat> takeSampleMemoryFormat(const c10::OperatorHandle& op,
                                                        torch::jit::Stack* stack,
                                                        size_t position);

// Lays the operator's tensor outputs out in `format` sample by sample.
void applySampleMemoryFormat(const c10::OperatorHandle& op, torch::jit::Stack* stack,
                             c10::MemoryFormat format, const LayerPtr& layer);

}  // namespace functorch_lite
