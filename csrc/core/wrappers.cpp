// The wrapper TensorImpls: logical metadata, detaching, and recognising wrappers cheaply.
#include "core/wrappers.h"

#include <c10/core/DispatchKeySet.h>
#include <c10/util/Exception.h>

#include <typeinfo>

#include "core/keys.h"

namespace functorch_lite {

namespace {

// NOTE: [Wrapper key sets]
// A BatchedTensor carries the router key plus the dense backend key of its value's device (so
// device checks that read the key set still work); a GradWrapper carries the router key plus
// PrivateUse3 (TensorImpl adds AutogradPrivateUse3 and ADInplaceOrView). The PrivateUse3 backend
// bit is what tells the two apart without a dynamic_cast.
//
// NOTE: [Wrappers are tensor-subclass-like]
// ATen's derivative formulas (FunctionsManual.cpp) and some kernels write results in place into
// fresh tensors (`at::zeros(...).scatter_(dim, index, grad)`, `self_p_exp *= self_t`) unless
// at::isTensorSubclassLike says an input is a wrapper, in which case they use the out-of-place
// form, as functorch's wrappers get. Under vmap(vjp), jacrev or jacfwd the in-place form would
// write batched values into an unbatched tensor. So every wrapper also carries kSubclassLikeKeys
// (the Python keys, which isTensorSubclassLike looks for; TensorImpl's constructor strips them,
// so they are added after it). They are never dispatched to: the router, above them, handles
// every operator on a wrapper, and processGradLevel excludes them (NOTE: [Python modes see only
// plain tensors]) while Autograd runs on a level's wrappers. The legacy vmap key (Batched) would
// also be subclass-like, but torch.autograd.grad refuses it on its outputs and inputs, and the
// CUDA engine casts tensors carrying it to its own BatchedTensorImpl.
c10::DispatchKeySet batchedKeys(const at::Tensor& value) {
  auto backend = c10::computeDispatchKey(value.scalar_type(), at::kStrided, value.device());
  return c10::DispatchKeySet({kRouterKey, backend});
}

const c10::DispatchKeySet kGradWrapperKeys({kRouterKey, kUnwrapKey});

// NOTE: [Tensors that inherit the router key]
// The router key alone does not make a tensor one of ours: torch's FunctionalTensorWrapper
// copies the key set of the tensor it wraps, so functionalize(f) inside one of our transforms
// makes tensors that carry the router key (and PrivateUse3) around our wrappers. The key set
// says which of our two kinds a tensor would be; its dynamic type confirms it (a pointer
// comparison when it is ours). router.cpp hands the foreign ones to their own kernels.
bool carriesRouterKey(const at::Tensor& t) {
  return t.defined() && t.unsafeGetTensorImpl()->key_set().has(kRouterKey);
}

bool isGradWrapperKeySet(c10::DispatchKeySet ks) {
  return ks.has_backend(kUnwrapBackend);
}

bool isWrapper(const at::Tensor& t) {
  if (!carriesRouterKey(t)) return false;
  const c10::TensorImpl& impl = *t.unsafeGetTensorImpl();
  return isGradWrapperKeySet(impl.key_set()) ? typeid(impl) == typeid(GradWrapperImpl)
                                             : typeid(impl) == typeid(BatchedTensorImpl);
}

}  // namespace

BatchedTensorImpl::BatchedTensorImpl(at::Tensor value, int64_t bdim, LayerPtr layer)
    : c10::TensorImpl(batchedKeys(value), value.dtype(), value.device()),
      value_(std::move(value)),
      bdim_(bdim),
      layer_(std::move(layer)) {
  key_set_ = key_set_ | kSubclassLikeKeys;  // NOTE: [Wrappers are tensor-subclass-like]
  refreshMetadata();
  set_storage_access_should_throw();
}

void BatchedTensorImpl::replaceValue(at::Tensor value, int64_t bdim) {
  value_ = std::move(value);
  bdim_ = bdim;
  refreshMetadata();
}

void BatchedTensorImpl::refreshMetadata() {
  TORCH_CHECK(bdim_ >= 0 && bdim_ < value_.dim(), "vmap: the batch dim ", bdim_,
      " is out of range for a tensor with ", value_.dim(), " dims.");
  const auto sizes = value_.sym_sizes();
  const auto strides = value_.sym_strides();
  c10::SymDimVector logical_sizes;
  c10::SymDimVector logical_strides;
  for (int64_t d = 0; d < value_.dim(); ++d) {
    if (d == bdim_) continue;
    logical_sizes.push_back(sizes[d]);
    logical_strides.push_back(strides[d]);
  }
  // The logical storage offset is the first sample's (NOTE: [as_strided under vmap]).
  set_sizes_and_strides(logical_sizes, logical_strides, value_.sym_storage_offset());
}

const char* BatchedTensorImpl::tensorimpl_type_name() const {
  return "functorch_lite::BatchedTensorImpl";
}

c10::intrusive_ptr<c10::TensorImpl> BatchedTensorImpl::shallow_copy_and_detach(
    const c10::VariableVersion& version_counter,
    bool allow_tensor_metadata_change) const {
  auto copy = c10::make_intrusive<BatchedTensorImpl>(value_, bdim_, layer_);
  copy->set_version_counter(version_counter);
  copy->set_allow_tensor_metadata_change(allow_tensor_metadata_change);
  return copy;
}

c10::intrusive_ptr<c10::TensorImpl> BatchedTensorImpl::shallow_copy_and_detach(
    c10::VariableVersion&& version_counter,
    bool allow_tensor_metadata_change) const {
  auto copy = c10::make_intrusive<BatchedTensorImpl>(value_, bdim_, layer_);
  copy->set_version_counter(std::move(version_counter));
  copy->set_allow_tensor_metadata_change(allow_tensor_metadata_change);
  return copy;
}

void BatchedTensorImpl::shallow_copy_from(const c10::intrusive_ptr<c10::TensorImpl>&) {
  TORCH_CHECK(false, "vmap: assigning to `.data` of a batched tensor is not supported");
}

GradWrapperImpl::GradWrapperImpl(at::Tensor value, LayerPtr layer, bool immutable)
    : c10::TensorImpl(kGradWrapperKeys, value.dtype(), value.device()),
      value_(std::move(value)),
      layer_(std::move(layer)),
      immutable_(immutable) {
  key_set_ = key_set_ | kSubclassLikeKeys;  // NOTE: [Wrappers are tensor-subclass-like]
  set_sizes_and_strides(value_.sym_sizes(), value_.sym_strides(), value_.sym_storage_offset());
  set_storage_access_should_throw();
}

void GradWrapperImpl::refreshMetadata() {
  if (sym_sizes() != value_.sym_sizes() || sym_strides() != value_.sym_strides() ||
      sym_storage_offset() != value_.sym_storage_offset()) {
    set_sizes_and_strides(value_.sym_sizes(), value_.sym_strides(), value_.sym_storage_offset());
  }
}

const char* GradWrapperImpl::tensorimpl_type_name() const {
  return "functorch_lite::GradWrapperImpl";
}

c10::intrusive_ptr<c10::TensorImpl> GradWrapperImpl::shallow_copy_and_detach(
    const c10::VariableVersion& version_counter,
    bool allow_tensor_metadata_change) const {
  auto copy = c10::make_intrusive<GradWrapperImpl>(value_, layer_, immutable_);
  copy->set_version_counter(version_counter);
  copy->set_allow_tensor_metadata_change(allow_tensor_metadata_change);
  return copy;
}

c10::intrusive_ptr<c10::TensorImpl> GradWrapperImpl::shallow_copy_and_detach(
    c10::VariableVersion&& version_counter,
    bool allow_tensor_metadata_change) const {
  auto copy = c10::make_intrusive<GradWrapperImpl>(value_, layer_, immutable_);
  copy->set_version_counter(std::move(version_counter));
  copy->set_allow_tensor_metadata_change(allow_tensor_metadata_change);
  return copy;
}

void GradWrapperImpl::shallow_copy_from(const c10::intrusive_ptr<c10::TensorImpl>&) {
  TORCH_CHECK(false, "grad: assigning to `.data` of a tensor inside a transform is not supported");
}

BatchedTensorImpl* asBatched(const at::Tensor& t) {
  if (!isWrapper(t) || isGradWrapperKeySet(t.unsafeGetTensorImpl()->key_set())) return nullptr;
  return static_cast<BatchedTensorImpl*>(t.unsafeGetTensorImpl());
}

GradWrapperImpl* asGradWrapper(const at::Tensor& t) {
  if (!isWrapper(t) || !isGradWrapperKeySet(t.unsafeGetTensorImpl()->key_set())) return nullptr;
  return static_cast<GradWrapperImpl*>(t.unsafeGetTensorImpl());
}

const LayerPtr* layerOf(const at::Tensor& t) {
  if (!isWrapper(t)) return nullptr;
  auto* impl = t.unsafeGetTensorImpl();
  if (isGradWrapperKeySet(impl->key_set())) {
    return &static_cast<GradWrapperImpl*>(impl)->layer();
  }
  return &static_cast<BatchedTensorImpl*>(impl)->layer();
}

bool isForeignWithRouterKey(const at::Tensor& t) {
  return carriesRouterKey(t) && !isWrapper(t);
}

at::Tensor makeBatched(at::Tensor value, int64_t bdim, const LayerPtr& layer) {
  return at::Tensor(c10::make_intrusive<BatchedTensorImpl>(std::move(value), bdim, layer));
}

at::Tensor makeGradWrapper(at::Tensor value, const LayerPtr& layer, bool immutable) {
  return at::Tensor(c10::make_intrusive<GradWrapperImpl>(std::move(value), layer, immutable));
}

}  // namespace functorch_lite
