// The layer stack and its guard: grad modes saved and restored, the mode key kept in TLS.
#include "core/layer.h"

#include <ATen/core/grad_mode.h>
#include <c10/core/AutogradState.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <limits>

#include "core/keys.h"
#include "core/unwrap.h"

namespace functorch_lite {

namespace {
thread_local std::vector<LayerPtr> stack_;
thread_local int64_t processing_bound_ = std::numeric_limits<int64_t>::max();
}  // namespace

int64_t processingBound() {
  return processing_bound_;
}

ProcessingGuard::ProcessingGuard(int64_t bound) : saved_(processing_bound_) {
  processing_bound_ = std::min(processing_bound_, bound);
}

ProcessingGuard::~ProcessingGuard() {
  processing_bound_ = saved_;
}

const std::vector<LayerPtr>& layerStack() {
  return stack_;
}

LayerGuard::LayerGuard(LayerKind kind, int64_t batch_size, Randomness randomness, std::string api) {
  registerPendingUnwrapKernels();
  layer_ = std::make_shared<Layer>();
  layer_->level = stack_.empty() ? 1 : stack_.back()->level + 1;
  layer_->kind = kind;
  layer_->batch_size = batch_size;
  layer_->randomness = randomness;
  layer_->api = std::move(api);
  layer_->prev_grad_mode = c10::GradMode::is_enabled();
  layer_->prev_fwd_grad_mode = c10::AutogradState::get_tls_state().get_fw_grad_mode();
  // NOTE: [Grad ignores an outer no_grad]
  // A grad or jvp layer records whatever the function does, even under an outer torch.no_grad;
  // the outer mode is saved and restored for the levels below (see unwrap.cpp).
  if (kind == LayerKind::Grad) {
    c10::GradMode::set_enabled(true);
  } else if (kind == LayerKind::Jvp) {
    c10::AutogradState::get_tls_state().set_fw_grad_mode(true);
  }
  stack_.push_back(layer_);
  c10::impl::tls_set_dispatch_key_included(kModeKey, true);
}

LayerGuard::~LayerGuard() {
  layer_->alive = false;
  TORCH_INTERNAL_ASSERT(!stack_.empty() && stack_.back() == layer_, "layers popped out of order");
  stack_.pop_back();
  if (layer_->kind == LayerKind::Grad) {
    c10::GradMode::set_enabled(layer_->prev_grad_mode);
  } else if (layer_->kind == LayerKind::Jvp) {
    c10::AutogradState::get_tls_state().set_fw_grad_mode(layer_->prev_fwd_grad_mode);
  }
  if (stack_.empty()) {
    c10::impl::tls_set_dispatch_key_included(kModeKey, false);
  }
}

}  // namespace functorch_lite
