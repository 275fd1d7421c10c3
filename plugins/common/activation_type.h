// The activation types every plugin supports (the "T" of the plugins' contract.json), shared by the
// host-side plugins and the kernel launchers.
#pragma once

namespace ndp {

enum class ActivationType { kFLOAT, kHALF, kBF16 };

}  // namespace ndp
