#include "nemotron_deploy/session.h"

#include <algorithm>

namespace nemotron_deploy {

Session::Session(const std::string& artifact_dir, const EngineOptions& options)
    : manifest_(read_manifest(artifact_dir)), engine_kind_(options.engine_kind), engine_(manifest_, options) {}

GenerateOptions Session::defaults() const {
  GenerateOptions options;
  options.eos_token_ids = manifest_.eos_token_ids;
  options.pad_token_id = manifest_.pad_token_id;
  const EngineRecord& record = pick_engine(manifest_, engine_kind_, nullptr);
  options.max_length = std::min(manifest_.max_length, record.max_seq_len);
  return options;
}

Generation Session::generate(const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options) {
  return nemotron_deploy::generate(engine_, prompts, options);
}

}  // namespace nemotron_deploy
