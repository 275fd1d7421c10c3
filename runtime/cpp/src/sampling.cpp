#include "nemotron_deploy/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "nemotron_deploy/error.h"

namespace nemotron_deploy {

Sampling Sampling::from(double temperature, int64_t top_k, double top_p, std::optional<uint64_t> seed) {
  Sampling s;
  s.greedy = temperature == 1.0 && top_k == 0 && top_p == 1.0;
  s.temperature = temperature;
  s.top_k = top_k;
  s.top_p = top_p;
  s.seed = seed;
  s.check();
  return s;
}

void Sampling::check() const {
  if (greedy) return;
  if (!(temperature > 0)) throw Error("temperature " + std::to_string(temperature) + ": expected a number > 0 (greedy decoding is argmax)");
  if (top_k < 0) throw Error("top_k " + std::to_string(top_k) + ": expected >= 0 (0 disables it)");
  if (!(top_p > 0 && top_p <= 1)) throw Error("top_p " + std::to_string(top_p) + ": expected a number in (0, 1]");
}

std::vector<double> filtered_probabilities(const float* logits, int64_t vocab, const Sampling& s) {
  std::vector<double> scores(logits, logits + vocab);
  for (double& x : scores) x /= s.temperature;
  if (s.top_k > 0 && s.top_k < vocab) {
    std::vector<double> sorted(scores);
    std::nth_element(sorted.begin(), sorted.begin() + (s.top_k - 1), sorted.end(), std::greater<double>());
    const double kth = sorted[s.top_k - 1];
    for (double& x : scores)
      if (x < kth) x = -std::numeric_limits<double>::infinity();
  }
  const double top = *std::max_element(scores.begin(), scores.end());
  std::vector<double> probs(vocab);
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += probs[i] = std::exp(scores[i] - top);
  for (double& p : probs) p /= sum;
  if (s.top_p < 1.0) {
    std::vector<int64_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return probs[a] > probs[b]; });
    double mass_before = 0, kept = 0;
    std::vector<double> out(vocab, 0.0);
    for (int64_t i : order) {
      if (!(mass_before < s.top_p)) break;
      out[i] = probs[i];
      kept += probs[i];
      mass_before += probs[i];
    }
    for (double& p : out) p /= kept;
    return out;
  }
  return probs;
}

Sampler::Sampler(Sampling sampling) : sampling_(sampling), rng_(sampling.seed.value_or(std::random_device{}())) { sampling_.check(); }

int64_t Sampler::operator()(const float* logits, int64_t vocab) {
  if (sampling_.greedy) return std::max_element(logits, logits + vocab) - logits;
  const std::vector<double> probs = filtered_probabilities(logits, vocab, sampling_);
  const double draw = std::uniform_real_distribution<double>(0.0, 1.0)(rng_);
  double cumulative = 0;
  int64_t last = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    if (probs[i] <= 0) continue;
    cumulative += probs[i];
    last = i;
    if (draw < cumulative) return i;
  }
  return last;  // rounding left the draw above the total
}

}  // namespace nemotron_deploy
