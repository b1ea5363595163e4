// The wrapper tensors: BatchedTensor (vmap) and GradWrapper (grad, jvp).
#pragma once

#include <ATen/Tensor.h>
#include <c10/core/TensorImpl.h>

#include "core/layer.h"

namespace functorch_lite {

// A tensor batched at one vmap level: `value` carries the batch dimension at `bdim`; the
// wrapper's own sizes and strides are the logical (per-sample) ones.
class BatchedTensorImpl : public c10::TensorImpl {
 public:
  BatchedTensorImpl(at::Tensor value, int64_t bdim, LayerPtr layer);

  const at::Tensor& value() const { return value_; }
  int64_t bdim() const { return bdim_; }
  const LayerPtr& layer() const { return layer_; }

  // For in-place view operators (squeeze_, transpose_, ...): the wrapper takes a new physical
  // value that is a view of the old one, and its logical metadata follows.
  void replaceValue(at::Tensor value, int64_t bdim);

  c10::intrusive_ptr<c10::TensorImpl> shallow_copy_and_detach(
      const c10::VariableVersion& version_counter,
      bool allow_tensor_metadata_change) const override;
  c10::intrusive_ptr<c10::TensorImpl> shallow_copy_and_detach(
      c10::VariableVersion&& version_counter,
      bool allow_tensor_metadata_change) const override;
  void shallow_copy_from(const c10::intrusive_ptr<c10::TensorImpl>& impl) override;

 private:
  const char* tensorimpl_type_name() const override;
  void refreshMetadata();

  at::Tensor value_;
  int64_t bdim_;
  LayerPtr layer_;
};

// A tensor at one grad/jvp level. Autograd records on the wrapper; `value` is the tensor one
// level down. `immutable` marks a captured tensor lifted into the level (see router.cpp).
class GradWrapperImpl : public c10::TensorImpl {
 public:
  GradWrapperImpl(at::Tensor value, LayerPtr layer, bool immutable);

  const at::Tensor& value() const { return value_; }
  const LayerPtr& layer() const { return layer_; }
  bool immutable() const { return immutable_; }
  // Re-reads sizes and strides from the value after an in-place operator changed them.
  void refreshMetadata();

  c10::intrusive_ptr<c10::TensorImpl> shallow_copy_and_detach(
      const c10::VariableVersion& version_counter,
      bool allow_tensor_metadata_change) const override;
  c10::intrusive_ptr<c10::TensorImpl> shallow_copy_and_detach(
      c10::VariableVersion&& version_counter,
      bool allow_tensor_metadata_change) const override;
  void shallow_copy_from(const c10::intrusive_ptr<c10::TensorImpl>& impl) override;

 private:
  const char* tensorimpl_type_name() const override;

  at::Tensor value_;
  LayerPtr layer_;
  bool immutable_;
};

// nullptr when `t` is not that kind of wrapper.
BatchedTensorImpl* asBatched(const at::Tensor& t);
GradWrapperImpl* asGradWrapper(const at::Tensor& t);

// A tensor that carries the router key but is not one of our wrappers (NOTE: [Tensors that
// inherit the router key] in wrappers.cpp).
bool isForeignWithRouterKey(const at::Tensor& t);

// The layer of a wrapper, or nullptr for any other tensor.
const LayerPtr* layerOf(const at::Tensor& t);

at::Tensor makeBatched(at::Tensor value, int64_t bdim, const LayerPtr& layer);
at::Tensor makeGradWrapper(at::Tensor value, const LayerPtr& layer, bool immutable = false);

}  // namespace functorch_lite
