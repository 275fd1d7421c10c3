// nemotron-generate: greedy or sampled tokens from an artifact's TensorRT engines, streamed to stdout.
//
//   nemotron-generate --artifact DIR --prompt-ids 1,2,3 --max-new-tokens 32 [--greedy | --temperature T
//                     --top-k K --top-p P --seed S] [--repetition-penalty R] [--presence-penalty P]
//                     [--frequency-penalty F] [--ignore-eos] [--prefill-chunk N] [--plugins LIB]
//                     [--engine tensorrt|tensorrt-rtx]
#include <nemotron_deploy/runtime.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>

namespace nd = nemotron_deploy;

namespace {

std::vector<int64_t> parse_ids(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    try {
      ids.push_back(std::stoll(item, &used));
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) throw nd::Error("--prompt-ids '" + text + "': expected comma-separated integers");
  }
  return ids;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string artifact, prompt;
    int64_t max_new_tokens = 32, top_k = 0;
    double temperature = 1.0, top_p = 1.0, repetition = 1.0, presence = 0.0, frequency = 0.0;
    std::optional<uint64_t> seed;
    std::optional<int64_t> prefill_chunk;
    bool greedy = false, ignore_eos = false;
    nd::EngineOptions engine;
    for (int i = 1; i < argc; ++i) {
      const std::string arg = argv[i];
      auto value = [&]() -> std::string {
        if (i + 1 >= argc) throw nd::Error(arg + ": expected a value");
        return argv[++i];
      };
      if (arg == "--artifact")
        artifact = value();
      else if (arg == "--prompt-ids")
        prompt = value();
      else if (arg == "--max-new-tokens")
        max_new_tokens = std::stoll(value());
      else if (arg == "--temperature")
        temperature = std::stod(value());
      else if (arg == "--top-k")
        top_k = std::stoll(value());
      else if (arg == "--top-p")
        top_p = std::stod(value());
      else if (arg == "--seed")
        seed = std::stoull(value());
      else if (arg == "--repetition-penalty")
        repetition = std::stod(value());
      else if (arg == "--presence-penalty")
        presence = std::stod(value());
      else if (arg == "--frequency-penalty")
        frequency = std::stod(value());
      else if (arg == "--prefill-chunk")
        prefill_chunk = std::stoll(value());
      else if (arg == "--greedy")
        greedy = true;
      else if (arg == "--ignore-eos")
        ignore_eos = true;
      else if (arg == "--plugins")
        engine.plugin_library = value();
      else if (arg == "--engine")
        engine.engine_kind = value();
      else if (arg == "-h" || arg == "--help") {
        std::cout << "usage: nemotron-generate --artifact DIR --prompt-ids 1,2,3 [--max-new-tokens N] [--greedy | --temperature T "
                     "--top-k K --top-p P --seed S] [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F] [--ignore-eos] "
                     "[--prefill-chunk N] [--plugins LIB] [--engine KIND]\n";
        return 0;
      } else
        throw nd::Error("unknown option " + arg + " (see --help)");
    }
    if (artifact.empty() || prompt.empty()) throw nd::Error("--artifact and --prompt-ids are required (see --help)");

    nd::Session session(artifact, engine);
    nd::GenerateOptions options = session.defaults();
    options.max_new_tokens = max_new_tokens;
    options.sampling = greedy ? nd::Sampling{} : nd::Sampling::from(temperature, top_k, top_p, seed);
    options.sampling.repetition_penalty = repetition;
    options.sampling.presence_penalty = presence;
    options.sampling.frequency_penalty = frequency;
    options.sampling.check();
    options.prefill_chunk_size = prefill_chunk;
    if (ignore_eos) options.eos_token_ids.clear();
    bool first = true;
    options.on_token = [&](int64_t, int64_t token) {
      std::cout << (first ? "" : ",") << token << std::flush;
      first = false;
    };
    const nd::Generation result = session.generate({parse_ids(prompt)}, options);
    std::cout << "\n";
    std::cerr << "finish: " << result.finish_reasons[0] << "\n";
    return 0;
  } catch (const std::exception& e) {  // nd::Error, and bad numbers from std::sto*
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
}
