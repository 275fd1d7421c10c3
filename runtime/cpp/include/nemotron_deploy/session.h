// An artifact directory opened for generation on TensorRT: the manifest, the engines, the defaults.
//
//   nemotron_deploy::Session session("artifact_dir");
//   auto options = session.defaults();          // EOS, pad id and length limit from the manifest
//   options.max_new_tokens = 32;
//   auto result = session.generate({{1, 2, 3}}, options);
#pragma once

#include <string>

#include "nemotron_deploy/decode.h"
#include "nemotron_deploy/manifest.h"
#include "nemotron_deploy/tensorrt_engine.h"

namespace nemotron_deploy {

class Session {
 public:
  explicit Session(const std::string& artifact_dir, const EngineOptions& options = {});
  const Manifest& manifest() const { return manifest_; }
  // Greedy, the model's EOS ids and pad id, the length limit of the model and the engines.
  GenerateOptions defaults() const;
  Generation generate(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options);

 private:
  Manifest manifest_;
  std::string engine_kind_;
  TensorRTEngine engine_;
};

}  // namespace nemotron_deploy
