// Visiting and replacing the tensors among an operator's boxed arguments or returns.
#pragma once

#include <ATen/core/function_schema.h>
#include <ATen/core/ivalue.h>
#include <ATen/core/stack.h>

namespace functorch_lite {

// Calls fn(tensor) for every defined tensor in `v` (a Tensor, a Tensor[] or a Tensor?[]).
template <typename Fn>
void forEachTensor(const c10::IValue& v, Fn&& fn) {
  if (v.isTensor()) {
    if (v.toTensor().defined()) fn(v.toTensor());
  } else if (v.isTensorList()) {
    for (const at::Tensor& t : v.toTensorList()) {
      if (t.defined()) fn(t);
    }
  } else if (v.isList()) {
    for (const c10::IValue& e : v.toListRef()) {
      if (e.isTensor() && e.toTensor().defined()) fn(e.toTensor());
    }
  }
}

// Replaces every defined tensor t in `v` by fn(t) (undefined tensors stay as they are).
template <typename Fn>
void mapTensors(c10::IValue& v, Fn&& fn) {
  if (v.isTensor()) {
    if (v.toTensor().defined()) v = fn(v.toTensor());
  } else if (v.isTensorList()) {
    auto list = v.toTensorList();
    c10::List<at::Tensor> out;
    out.reserve(list.size());
    for (const at::Tensor& t : list) out.push_back(t.defined() ? fn(t) : t);
    v = std::move(out);
  } else if (v.isList()) {
    auto list = v.toList();
    bool has_tensor = false;
    for (const c10::IValue& e : list) has_tensor |= e.isTensor();
    if (!has_tensor) return;
    c10::impl::GenericList out(list.elementType());
    out.reserve(list.size());
    for (const c10::IValue& e : list) {
      out.push_back(e.isTensor() && e.toTensor().defined() ? c10::IValue(fn(e.toTensor())) : e);
    }
    v = std::move(out);
  }
}

// The argument slots [first, end) of an operator call on `stack`.
inline size_t argumentsBegin(const torch::jit::Stack& stack, size_t num_arguments) {
  return stack.size() - num_arguments;
}

// True when the operator writes into this argument (in-place self, out=).
inline bool writes(const c10::Argument& arg) {
  return arg.alias_info() != nullptr && arg.alias_info()->isWrite();
}

// The argument that return `ret` of an in-place or out= operator aliases, or -1 for a return
// that is a new tensor.
inline int64_t writtenArgument(const c10::FunctionSchema& schema, size_t ret) {
  const auto* ret_alias = schema.returns()[ret].alias_info();
  if (ret_alias == nullptr || !ret_alias->isWrite()) return -1;
  const auto& args = schema.arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    const auto* arg_alias = args[i].alias_info();
    if (arg_alias != nullptr && arg_alias->isWrite() &&
        arg_alias->beforeSets() == ret_alias->beforeSets()) {
      return static_cast<int64_t>(i);
    }
  }
  return -1;
}

}  // namespace functorch_lite
