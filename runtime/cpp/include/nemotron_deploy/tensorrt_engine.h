// The artifact's TensorRT engines as a StepEngine: states stay on the GPU from step to step (each
// step's present.* buffers become the next step's past.* inputs); only token ids and the mask go to
// the device and the last position's logits come back.
//
// TensorRT is loaded with dlopen (libnvinfer.so.10, or libtensorrt_rtx.so.1 for tensorrt-rtx plans), not
// linked: the library builds and links on a machine without TensorRT's libraries (CI compiles it against
// the headers only), a program that embeds it starts without TensorRT installed and gets an Error
// naming what is missing when it opens an engine, and the TensorRT build that serves it is chosen at
// run time (LD_LIBRARY_PATH), as the Python backend's is.
#pragma once

#include <memory>
#include <string>

#include "nemotron_deploy/decode.h"
#include "nemotron_deploy/manifest.h"

namespace nemotron_deploy {

struct EngineOptions {
  std::string engine_kind;     // "tensorrt" | "tensorrt-rtx"; empty: the first the artifact has
  std::string plugin_library;  // empty: $NEMOTRON_DEPLOY_PLUGINS, else the library recorded at build time
  int device = 0;
};

class TensorRTEngine : public StepEngine {
 public:
  TensorRTEngine(const Manifest& manifest, const EngineOptions& options);
  ~TensorRTEngine() override;
  TensorRTEngine(const TensorRTEngine&) = delete;
  TensorRTEngine& operator=(const TensorRTEngine&) = delete;

  int64_t vocab_size() const override;
  int64_t max_batch() const;
  void reset(int64_t batch) override;
  const float* step(Graph graph, const std::vector<int64_t>& ids, int64_t new_tokens, const std::vector<int64_t>& mask,
                    int64_t total_len) override;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// What can be checked before any GPU work, shared with the tests: the engine record to use, the
// TensorRT version it was built with against the loaded one ("10.14.1" style), and the GPU.
const EngineRecord& pick_engine(const Manifest& manifest, const std::string& kind, std::string* chosen_kind);
void check_tensorrt_version(const EngineRecord& record, const std::string& loaded_version, const std::string& plan);
void check_gpu(const EngineRecord& record, const std::string& device_capability, const std::string& device_name, const std::string& plan);

}  // namespace nemotron_deploy
