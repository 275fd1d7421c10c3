// Next-token choice from logits: greedy, or temperature / top-k / top-p with a seeded generator.
// The filtered distribution is the Python sampler's (runtime/sampling.py), step for step.
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

  // Greedy unless a sampling parameter is given, as on the command line. Throws Error on bad values.
  static Sampling from(double temperature, int64_t top_k, double top_p, std::optional<uint64_t> seed);
  void check() const;
};

// The probabilities sampling draws from: softmax(logits / temperature), top-k (ties at the k-th
// value kept), then the smallest set of most likely tokens whose mass reaches top_p, renormalised.
// logits: `vocab` float32 values.
std::vector<double> filtered_probabilities(const float* logits, int64_t vocab, const Sampling& sampling);

class Sampler {
 public:
  explicit Sampler(Sampling sampling);
  // One token id from one row of `vocab` logits.
  int64_t operator()(const float* logits, int64_t vocab);

 private:
  Sampling sampling_;
  std::mt19937_64 rng_;
};

}  // namespace nemotron_deploy
