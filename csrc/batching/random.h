// vmap randomness: the mode-key kernel for random operators.
#pragma once

namespace functorch_lite {

// Registers the randomness kernel on kModeKey for every random operator (those tagged
// nondeterministic_seeded) that has no CompositeImplicitAutograd kernel, and the dropout-family
// kernel (NOTE: [Dropout of an unbatched tensor]).
void registerRandomnessKernels();

}  // namespace functorch_lite
