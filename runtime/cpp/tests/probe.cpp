// The C++ runtime's test driver: the Python tests (tests/cpp/) run it and compare its answers with the
// Python runtime's. Every command reads its arguments and prints one JSON object; an Error prints
// "error: MESSAGE" on stdout and exits 2.
//
//   probe manifest DIR               the manifest as read (states with shapes for batch 2, defaults)
//   probe sample < {"logits": [[...]], "sampling": {...}, "draws": N}
//                                    filtered distributions, greedy ids, N seeded draws per row
//   probe penalize < {"logits": [...], "sampling": {...}, "prompt": [...], "output": [...]}
//                                    the penalized logits of one row, and the (greedy or seeded) token
//   probe decode < {"prompts": [...], "vocab": V, "options": {...}}
//                                    generate() through a test engine of known behaviour, with its trace
//   probe check-engine DIR KIND LOADED_VERSION CAPABILITY DEVICE_NAME
//                                    the checks before any GPU work: engine record, TensorRT version, GPU
#include <nemotron_deploy/runtime.h>

#include <iostream>
#include <nlohmann/json.hpp>

namespace nd = nemotron_deploy;
using json = nlohmann::json;

namespace {

json dims(const std::vector<nd::Dim>& shape) {
  json out = json::array();
  for (const auto& d : shape) out.push_back(d.fixed() ? json(d.size) : json(d.symbol));
  return out;
}

json manifest(const std::string& dir) {
  const nd::Manifest m = nd::read_manifest(dir);
  json states = json::array();
  for (const auto& s : m.states)
    states.push_back({{"name", s.name},
                      {"present", s.present},
                      {"role", s.role},
                      {"dtype", s.dtype},
                      {"shape", dims(s.shape)},
                      {"initial_shape_batch_2", s.initial_shape(2)},
                      {"bytes_per_element", nd::dtype_size(s.dtype)}});
  json engines = json::object();
  for (const auto& [kind, e] : m.engines)
    engines[kind] = {{"version", e.version},      {"max_batch", e.max_batch}, {"max_seq_len", e.max_seq_len},
                     {"prefill", e.prefill_plan}, {"decode", e.decode_plan},  {"plugins", e.plugins}};
  json plugins = json::array();
  for (const auto& p : m.plugins) plugins.push_back({{"name", p.name}, {"version", p.version}, {"namespace", p.name_space}});
  return {{"target", m.target},
          {"dtype", m.dtype},
          {"vocab_size", m.vocab_size},
          {"max_length", m.max_length},
          {"layer_types", m.layer_types},
          {"states", states},
          {"eos_token_ids", m.eos_token_ids},
          {"pad_token_id", m.pad_token_id},
          {"plugins", plugins},
          {"engines", engines},
          {"tokenizer", m.tokenizer_file ? json(*m.tokenizer_file) : json()}};
}

nd::Sampling sampling(const json& s) {
  nd::Sampling out;
  if (!s.value("greedy", false)) {
    std::optional<uint64_t> seed;
    if (s.contains("seed") && !s["seed"].is_null()) seed = s["seed"].get<uint64_t>();
    out = nd::Sampling::from(s.value("temperature", 1.0), s.value("top_k", 0), s.value("top_p", 1.0), seed);
  }
  out.repetition_penalty = s.value("repetition_penalty", 1.0);
  out.presence_penalty = s.value("presence_penalty", 0.0);
  out.frequency_penalty = s.value("frequency_penalty", 0.0);
  out.check();
  return out;
}

json penalize(const json& in) {
  const nd::Sampling config = sampling(in.at("sampling"));
  const std::vector<float> logits = in.at("logits").get<std::vector<float>>();
  const auto prompt = in.at("prompt").get<std::vector<int64_t>>(), output = in.at("output").get<std::vector<int64_t>>();
  return {{"logits", nd::penalize(logits.data(), static_cast<int64_t>(logits.size()), config, prompt, output)},
          {"token", nd::Sampler(config)(logits.data(), static_cast<int64_t>(logits.size()), prompt, output)}};
}

json sample(const json& in) {
  const nd::Sampling config = sampling(in.at("sampling"));
  json probs = json::array(), greedy = json::array(), draws = json::array();
  nd::Sampler sampler(config);
  for (const auto& row : in.at("logits")) {
    const std::vector<float> logits = row.get<std::vector<float>>();
    const int64_t vocab = static_cast<int64_t>(logits.size());
    probs.push_back(config.greedy ? json() : json(nd::filtered_probabilities(logits.data(), vocab, config)));
    greedy.push_back(nd::Sampler(nd::Sampling{})(logits.data(), vocab));
    json row_draws = json::array();
    for (int i = 0; i < in.value("draws", 0); ++i) row_draws.push_back(sampler(logits.data(), vocab));
    draws.push_back(row_draws);
  }
  return {{"probabilities", probs}, {"greedy", greedy}, {"draws", draws}};
}

// Known behaviour: each row's next token is (its last input token + 1) % vocab, certainly (one-hot
// logits); every call is recorded.
class CountingEngine : public nd::StepEngine {
 public:
  explicit CountingEngine(int64_t vocab) : vocab_(vocab) {}
  int64_t vocab_size() const override { return vocab_; }
  void reset(int64_t batch) override {
    batch_ = batch;
    trace.push_back({{"call", "reset"}, {"batch", batch}});
  }
  const float* step(nd::Graph graph, const std::vector<int64_t>& ids, int64_t new_tokens, const std::vector<int64_t>& mask,
                    int64_t total_len) override {
    trace.push_back({{"call", graph == nd::Graph::Prefill ? "prefill" : "decode"},
                     {"new_tokens", new_tokens},
                     {"total_len", total_len},
                     {"ids", ids},
                     {"mask", mask}});
    logits_.assign(batch_ * vocab_, 0.0f);
    for (int64_t r = 0; r < batch_; ++r) logits_[r * vocab_ + (ids[r * new_tokens + new_tokens - 1] + 1) % vocab_] = 1.0f;
    return logits_.data();
  }
  json trace = json::array();

 private:
  int64_t vocab_, batch_ = 0;
  std::vector<float> logits_;
};

json decode(const json& in) {
  CountingEngine engine(in.at("vocab").get<int64_t>());
  const json& o = in.at("options");
  nd::GenerateOptions options;
  options.max_new_tokens = o.at("max_new_tokens").get<int64_t>();
  options.sampling = sampling(o.value("sampling", json::object()));
  options.eos_token_ids = o.value("eos_token_ids", std::vector<int64_t>{});
  options.pad_token_id = o.value("pad_token_id", 0);
  options.max_length = o.at("max_length").get<int64_t>();
  if (o.contains("prefill_chunk_size") && !o["prefill_chunk_size"].is_null())
    options.prefill_chunk_size = o["prefill_chunk_size"].get<int64_t>();
  json streamed = json::array();
  options.on_token = [&](int64_t row, int64_t token) { streamed.push_back({row, token}); };
  const nd::Generation g = nd::generate(engine, in.at("prompts").get<std::vector<std::vector<int64_t>>>(), options);
  return {{"new_token_ids", g.new_token_ids}, {"finish_reasons", g.finish_reasons}, {"streamed", streamed}, {"trace", engine.trace}};
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::string command = argc > 1 ? argv[1] : "";
    json out;
    if (command == "manifest" && argc == 3)
      out = manifest(argv[2]);
    else if (command == "sample")
      out = sample(json::parse(std::cin));
    else if (command == "penalize")
      out = penalize(json::parse(std::cin));
    else if (command == "decode")
      out = decode(json::parse(std::cin));
    else if (command == "check-engine" && argc == 7) {
      const nd::Manifest m = nd::read_manifest(argv[2]);
      std::string kind;
      const nd::EngineRecord& record = nd::pick_engine(m, argv[3], &kind);
      const std::string plan = m.file(record.prefill_plan);
      nd::check_tensorrt_version(record, argv[4], plan);
      nd::check_gpu(record, argv[5], argv[6], plan);
      out = {{"kind", kind}, {"prefill", plan}};
    } else
      throw nd::Error(
          "usage: probe manifest DIR | probe sample < JSON | probe penalize < JSON | probe decode < JSON | probe check-engine DIR KIND "
          "VERSION CC NAME");
    std::cout << out.dump() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cout << "error: " << e.what() << "\n";
    return 2;
  }
}
