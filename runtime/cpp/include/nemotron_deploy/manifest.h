// An artifact's manifest.json: what the C++ runtime needs of it, checked when read (the same checks
// and messages as runtime/artifact/manifest.py for every field read here).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace nemotron_deploy {

// A dimension: a size, or a symbol such as "batch" or "past_len".
struct Dim {
  int64_t size = -1;   // >= 0 when fixed
  std::string symbol;  // non-empty when symbolic
  bool fixed() const { return symbol.empty(); }
};

struct StateSpec {
  std::string name;        // past.{layer}.{conv|ssm|key|value}: the input
  std::string present;     // present.{layer}.*: the output that becomes the next step's input
  std::string role;        // conv_state | ssm_state | key | value
  std::string dtype;       // float32 | float16 | bfloat16
  std::vector<Dim> shape;  // shape[0] is "batch"; K/V have "past_len" at index 2

  bool grows() const { return role == "key" || role == "value"; }
  // Shape for `batch` new sequences (K/V with past length 0).
  std::vector<int64_t> initial_shape(int64_t batch) const;
};

struct PluginRecord {
  std::string name, version, name_space;
};

// `nemotron-deploy build` results, per engine kind (tensorrt | tensorrt-rtx).
struct EngineRecord {
  std::string version;             // TensorRT version that built the plans
  std::string compute_capability;  // "native" or e.g. "90"
  std::string built_on;            // compute capability of the GPU that built them ("" unknown)
  int64_t max_batch = 0, max_seq_len = 0, max_new_tokens = 0;
  std::string plugins;                    // plugin library used at build time ("" none)
  std::string prefill_plan, decode_plan;  // file names in the artifact directory
};

struct Manifest {
  std::string dir;     // the artifact directory
  std::string target;  // onnxruntime | tensorrt | tensorrt-rtx
  std::string dtype;
  int64_t vocab_size = 0;
  int64_t max_length = 0;  // max_position_embeddings
  std::vector<std::string> layer_types;
  std::vector<StateSpec> states;
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = 0;
  std::vector<PluginRecord> plugins;
  std::map<std::string, EngineRecord> engines;
  std::optional<std::string> tokenizer_file;

  std::string file(const std::string& name) const { return dir + "/" + name; }
};

// Read and check DIR/manifest.json and the presence and sizes of the files it lists.
// Throws Error naming the file and field.
Manifest read_manifest(const std::string& artifact_dir);

// Bytes of one element of a state dtype (float32 4, float16 / bfloat16 2).
int64_t dtype_size(const std::string& dtype);

}  // namespace nemotron_deploy
