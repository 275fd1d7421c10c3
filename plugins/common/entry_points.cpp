// The TensorRT 10 dynamic-plugin entry points: what `trtexec --dynamicPlugins`,
// IPluginRegistry::loadLibrary and Triton's TensorRT backend look up in the library.
#include "../mamba2_core/mamba2_core_plugin.h"
#include "../moe_dispatch/moe_dispatch_plugin.h"
#include "plugin_base.h"

// TENSORRTAPI is empty outside TensorRT's own build; the library is built with hidden visibility.
#define NDP_EXPORT __attribute__((visibility("default")))

extern "C" NDP_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder) { ndp::setLoggerFinder(finder); }

extern "C" NDP_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  nbCreators = 0;
  return ndp::guarded<nvinfer1::IPluginCreatorInterface* const*>("library", "getCreators", nullptr, [&] {
    static ndp::Mamba2CoreCreator mamba2Core;  // constructing a creator allocates: may throw, once
    static ndp::MoeDispatchCreator moeDispatch;
    static nvinfer1::IPluginCreatorInterface* const creators[] = {&mamba2Core, &moeDispatch};
    nbCreators = 2;
    return creators;
  });
}
