// The activation types every plugin supports (the "T" of exporter/plugin_ops.py), shared by the
// host-side plugins and the kernel launchers.
#pragma once

namespace ndp
{

enum class ActivationType
{
    kFLOAT,
    kHALF,
    kBF16
};

} // namespace ndp
