#include "nemotron_deploy/manifest.h"

#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "nemotron_deploy/error.h"

namespace nemotron_deploy {
namespace {

using json = nlohmann::json;
constexpr const char* kFormat = "nemotron-deploy-artifact";
constexpr int kFormatVersion = 1;

bool is_dir(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Size of a regular file, or -1 when there is none.
int64_t file_size(const std::string& path) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return -1;
  return static_cast<int64_t>(st.st_size);
}

// The rules of runtime/artifact/manifest.py's schema (the fields marked cpp=True) for the fields read here, with
// its messages: "FILE: field 'F' is VALUE, expected WHAT" (tests/cpp_runtime damages each field and compares).
class Checker {
 public:
  explicit Checker(std::string file) : file_(std::move(file)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& expected, const json* value = nullptr) const {
    std::string got = value ? value->dump() : "missing";
    if (got.size() > 60) got = got.substr(0, 60);
    throw Error(file_ + ": field '" + field + "' is " + got + ", expected " + expected);
  }

  const json& get(const json& obj, const std::string& key, const std::string& field, json::value_t kind,
                  const std::string& expected) const {
    auto it = obj.find(key);
    if (it == obj.end()) fail(field, expected);
    if (!matches(*it, kind)) fail(field, expected, &*it);
    return *it;
  }

  // nullptr when absent or null
  const json* optional(const json& obj, const std::string& key, const std::string& field, json::value_t kind,
                       const std::string& expected) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return nullptr;
    if (!matches(*it, kind)) fail(field, expected, &*it);
    return &*it;
  }

  std::string string(const json& obj, const std::string& key, const std::string& field, const std::string& expected) const {
    return get(obj, key, field, json::value_t::string, expected).get<std::string>();
  }

  int64_t positive(const json& obj, const std::string& key, const std::string& field) const {
    const json& v = get(obj, key, field, json::value_t::number_integer, "an integer >= 1");
    if (v.get<int64_t>() < 1) fail(field, "an integer >= 1", &v);
    return v.get<int64_t>();
  }

  std::string one_of(const json& obj, const std::string& key, const std::string& field, const std::vector<std::string>& choices) const {
    std::string expected = "one of ";
    for (size_t i = 0; i < choices.size(); ++i) expected += (i ? ", " : "") + choices[i];
    const std::string value = string(obj, key, field, expected);
    if (std::find(choices.begin(), choices.end(), value) == choices.end()) fail(field, expected, &obj.at(key));
    return value;
  }

  std::vector<Dim> shape(const json& obj, const std::string& field) const {
    const json& dims = get(obj, "shape", field + ".shape", json::value_t::array, "a list of sizes (integers >= 0) and symbols");
    std::vector<Dim> out;
    for (size_t i = 0; i < dims.size(); ++i) {
      const json& d = dims[i];
      Dim dim;
      if (d.is_number_integer() && d.get<int64_t>() >= 0) {
        dim.size = d.get<int64_t>();
      } else if (d.is_string() && !d.get<std::string>().empty()) {
        dim.symbol = d.get<std::string>();
      } else {
        fail(field + ".shape[" + std::to_string(i) + "]", "an integer >= 0 or a symbol such as 'batch'", &d);
      }
      out.push_back(dim);
    }
    return out;
  }

  const std::string& file() const { return file_; }

 private:
  static bool matches(const json& v, json::value_t kind) {
    switch (kind) {
      case json::value_t::number_integer:
        return v.is_number_integer();  // booleans are not integers in JSON
      case json::value_t::string:
        return v.is_string();
      case json::value_t::array:
        return v.is_array();
      case json::value_t::object:
        return v.is_object();
      default:
        return v.type() == kind;
    }
  }
  std::string file_;
};

const std::vector<std::string> kDtypes = {"float32", "float16", "bfloat16"};

std::vector<StateSpec> read_states(const Checker& c, const json& raw) {
  const json& list = c.get(raw, "states", "states", json::value_t::array, "a list");
  std::vector<StateSpec> states;
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string where = "states[" + std::to_string(i) + "]";
    if (!list[i].is_object()) c.fail(where, "an object", &list[i]);
    const json& s = list[i];
    StateSpec spec;
    spec.name = c.string(s, "name", where + ".name", "a tensor name");
    spec.present = c.string(s, "present", where + ".present", "a tensor name");
    spec.role = c.one_of(s, "role", where + ".role", {"conv_state", "ssm_state", "key", "value"});
    spec.dtype = c.one_of(s, "dtype", where + ".dtype", kDtypes);
    spec.shape = c.shape(s, where);
    if (spec.shape.empty() || spec.shape[0].symbol != "batch") {
      json first = s["shape"].empty() ? json::array() : json::array({s["shape"][0]});
      c.fail(where + ".shape[0]", "'batch'", &first);
    }
    states.push_back(std::move(spec));
  }
  return states;
}

std::map<std::string, EngineRecord> read_engines(const Checker& c, const json& raw) {
  std::map<std::string, EngineRecord> engines;
  const json* all = c.optional(raw, "engines", "engines", json::value_t::object, "an object");
  if (!all) return engines;
  for (const auto& [kind, record] : all->items()) {
    const std::string where = "engines." + kind;
    if (!record.is_object()) c.fail(where, "an object", &record);
    EngineRecord e;
    e.version = c.string(record, "version", where + ".version", "a TensorRT version");
    const json* cc = c.optional(record, "compute_capability", where + ".compute_capability", json::value_t::string, "a compute capability");
    e.compute_capability = cc ? cc->get<std::string>() : "native";
    const json* built = c.optional(record, "built_on", where + ".built_on", json::value_t::string, "a compute capability or null");
    e.built_on = built ? built->get<std::string>() : "";
    e.max_batch = c.positive(record, "max_batch", where + ".max_batch");
    e.max_seq_len = c.positive(record, "max_seq_len", where + ".max_seq_len");
    e.max_new_tokens = c.positive(record, "max_new_tokens", where + ".max_new_tokens");
    if (const json* plugins = c.optional(record, "plugins", where + ".plugins", json::value_t::object, "an object or null"))
      e.plugins = c.string(*plugins, "library", where + ".plugins.library", "a library path");
    const json& graphs = c.get(record, "graphs", where + ".graphs", json::value_t::object, "an object with 'prefill' and 'decode'");
    for (const char* graph : {"prefill", "decode"}) {
      const std::string g = where + ".graphs." + graph;
      const json& plan = c.get(graphs, graph, g, json::value_t::object, "an object");
      (std::string(graph) == "prefill" ? e.prefill_plan : e.decode_plan) = c.string(plan, "file", g + ".file", "a file name");
    }
    engines[kind] = e;
  }
  return engines;
}

void check_files(const Checker& c, const json& raw, const std::string& dir) {
  const json& files = c.get(raw, "files", "files", json::value_t::array, "a list");
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string where = "files[" + std::to_string(i) + "]";
    if (!files[i].is_object()) c.fail(where, "an object", &files[i]);
    const std::string name = c.string(files[i], "name", where + ".name", "a file name");
    if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos)
      c.fail(where + ".name", "a file name inside the artifact directory", &files[i]["name"]);
    const json& bytes = c.get(files[i], "bytes", where + ".bytes", json::value_t::number_integer, "a size in bytes");
    if (bytes.get<int64_t>() < 0) c.fail(where + ".bytes", "a size in bytes (>= 0)", &bytes);
    const std::string path = dir + "/" + name;
    const int64_t size = file_size(path);
    if (size < 0) throw Error(path + ": missing (listed in manifest.json)");
    if (size != bytes.get<int64_t>())
      throw Error(path + ": " + std::to_string(size) + " bytes, manifest.json records " + std::to_string(bytes.get<int64_t>()) +
                  " (truncated or replaced)");
  }
}

}  // namespace

std::vector<int64_t> StateSpec::initial_shape(int64_t batch) const {
  std::vector<int64_t> out;
  for (const Dim& d : shape) out.push_back(d.fixed() ? d.size : (d.symbol == "batch" ? batch : 0));
  return out;
}

int64_t dtype_size(const std::string& dtype) {
  if (dtype == "float32") return 4;
  if (dtype == "float16" || dtype == "bfloat16") return 2;
  throw Error("dtype '" + dtype + "': expected float32, float16 or bfloat16");
}

Manifest read_manifest(const std::string& artifact_dir) {
  const std::string file = artifact_dir + "/manifest.json";
  if (!is_dir(artifact_dir))
    throw Error(artifact_dir + ": not a directory (expected an artifact directory written by 'nemotron-deploy export')");
  std::ifstream in(file);
  if (!in) throw Error(file + ": missing (not an artifact directory, or its export did not finish)");
  json raw;
  try {
    raw = json::parse(in);
  } catch (const json::parse_error& e) {
    throw Error(file + ": not valid JSON (" + std::string(e.what()) + ")");
  }
  if (!raw.is_object()) throw Error(file + ": expected a JSON object");
  const Checker c(file);
  if (raw.value("format", json()) != kFormat) {
    const json got = raw.value("format", json());
    throw Error(file + ": field 'format' is " + (got.is_null() ? "missing" : got.dump()) + ", expected '" + kFormat + "'");
  }
  if (raw.value("format_version", json()) != kFormatVersion)
    throw Error(file + ": format_version " + raw.value("format_version", json()).dump() + ", this nemotron-deploy reads version " +
                std::to_string(kFormatVersion) + "; re-export the checkpoint");

  Manifest m;
  m.dir = artifact_dir;
  m.target = c.one_of(raw, "target", "target", {"onnxruntime", "tensorrt", "tensorrt-rtx"});
  m.dtype = c.one_of(raw, "dtype", "dtype", kDtypes);
  const json& model = c.get(raw, "model", "model", json::value_t::object, "an object");
  m.vocab_size = c.positive(model, "vocab_size", "model.vocab_size");
  m.max_length = c.positive(model, "max_position_embeddings", "model.max_position_embeddings");
  const json& kinds = c.get(model, "layer_types", "model.layer_types", json::value_t::array, "a list of layer kinds");
  for (const json& k : kinds) {
    if (!k.is_string() || (k != "mamba" && k != "attention" && k != "mlp" && k != "moe"))
      c.fail("model.layer_types", "a non-empty list of mamba / attention / mlp / moe", &kinds);
    m.layer_types.push_back(k.get<std::string>());
  }
  if (m.layer_types.empty()) c.fail("model.layer_types", "a non-empty list of mamba / attention / mlp / moe", &kinds);
  m.states = read_states(c, raw);

  if (const json* gen = c.optional(raw, "generation", "generation", json::value_t::object, "an object")) {
    if (const json* eos = c.optional(*gen, "eos_token_ids", "generation.eos_token_ids", json::value_t::array, "a list of token ids")) {
      for (size_t i = 0; i < eos->size(); ++i) {
        const json& t = (*eos)[i];
        if (!t.is_number_integer() || t.get<int64_t>() < 0)
          c.fail("generation.eos_token_ids[" + std::to_string(i) + "]", "a token id (an integer >= 0)", &t);
        m.eos_token_ids.push_back(t.get<int64_t>());
      }
    }
    if (const json* pad =
            c.optional(*gen, "pad_token_id", "generation.pad_token_id", json::value_t::number_integer, "a token id or null")) {
      if (pad->get<int64_t>() < 0) c.fail("generation.pad_token_id", "a token id (an integer >= 0) or null", pad);
      m.pad_token_id = pad->get<int64_t>();
    }
  }
  if (const json* tok = c.optional(raw, "tokenizer", "tokenizer", json::value_t::object, "an object or null"))
    m.tokenizer_file = c.string(*tok, "file", "tokenizer.file", "a file name");
  if (const json* plugins = c.optional(raw, "plugins", "plugins", json::value_t::array, "a list")) {
    for (size_t i = 0; i < plugins->size(); ++i) {
      const std::string where = "plugins[" + std::to_string(i) + "]";
      const json& p = (*plugins)[i];
      if (!p.is_object()) c.fail(where, "an object", &p);
      m.plugins.push_back({c.string(p, "name", where + ".name", "a string"), c.string(p, "version", where + ".version", "a string"),
                           c.string(p, "namespace", where + ".namespace", "a string")});
    }
  }
  m.engines = read_engines(c, raw);
  check_files(c, raw, artifact_dir);
  return m;
}

}  // namespace nemotron_deploy
