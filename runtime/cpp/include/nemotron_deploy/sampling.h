// Next-token choice from logits: penalties for tokens already seen (repetition, presence, frequency),
// then greedy, or temperature / top-k / top-p with a seeded generator. The penalized logits and the
// filtered distribution are the Python sampler's (runtime/sampling.py), step for step.
#pragma once

#include <cstdint>
#include <optional>
#include <random>
#include <vector>

namespace nemotron_deploy {

struct Sampling {
  bool greedy = true;        // argmax; the rest is ignored
  double temperature = 1.0;  // > 0
  int64_t top_k = 0;         // 0: no top-k filter
  double top_p = 1.0;        // in (0, 1]; 1: no top-p filter
  std::optional<uint64_t> seed;
  // Penalties (they apply to greedy decoding too). repetition_penalty: transformers' definition, over
  // the prompt and output tokens (> 0, 1 off); presence / frequency: the OpenAI API's, over the output
  // tokens (each in [-2, 2], 0 off).
  double repetition_penalty = 1.0;
  double presence_penalty = 0.0;
  double frequency_penalty = 0.0;

  // Greedy unless a sampling parameter is given, as on the command line. Throws Error on bad values.
  static Sampling from(double temperature, int64_t top_k, double top_p, std::optional<uint64_t> seed);
  void check() const;
  bool penalized() const { return repetition_penalty != 1.0 || presence_penalty != 0.0 || frequency_penalty != 0.0; }
};

// `vocab` float32 logits with the penalties applied (float32, as transformers computes them):
// repetition over `prompt` and `output`, then presence and frequency over `output`.
std::vector<float> penalize(const float* logits, int64_t vocab, const Sampling& sampling, const std::vector<int64_t>& prompt,
                            const std::vector<int64_t>& output);

// The probabilities sampling draws from: softmax(logits / temperature), top-k (ties at the k-th
// value kept), then the smallest set of most likely tokens whose mass reaches top_p, renormalised.
// logits: `vocab` float32 values.
std::vector<double> filtered_probabilities(const float* logits, int64_t vocab, const Sampling& sampling);

class Sampler {
 public:
  explicit Sampler(Sampling sampling);
  // One token id from one row of `vocab` logits (no penalties).
  int64_t operator()(const float* logits, int64_t vocab);
  // The same after the penalties for that row's prompt and output so far.
  int64_t operator()(const float* logits, int64_t vocab, const std::vector<int64_t>& prompt, const std::vector<int64_t>& output);

 private:
  Sampling sampling_;
  std::mt19937_64 rng_;
};

}  // namespace nemotron_deploy
