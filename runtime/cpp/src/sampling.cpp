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
  if (!(repetition_penalty > 0))
    throw Error("repetition_penalty " + std::to_string(repetition_penalty) + ": expected a number > 0 (1 disables it)");
  if (!(presence_penalty >= -2 && presence_penalty <= 2))
    throw Error("presence_penalty " + std::to_string(presence_penalty) + ": expected a number in [-2, 2] (0 disables it)");
  if (!(frequency_penalty >= -2 && frequency_penalty <= 2))
    throw Error("frequency_penalty " + std::to_string(frequency_penalty) + ": expected a number in [-2, 2] (0 disables it)");
  if (greedy) return;
  if (!(temperature > 0)) throw Error("temperature " + std::to_string(temperature) + ": expected a number > 0 (greedy decoding is argmax)");
  if (top_k < 0) throw Error("top_k " + std::to_string(top_k) + ": expected >= 0 (0 disables it)");
  if (!(top_p > 0 && top_p <= 1)) throw Error("top_p " + std::to_string(top_p) + ": expected a number in (0, 1]");
}

std::vector<float> penalize(const float* logits, int64_t vocab, const Sampling& s, const std::vector<int64_t>& prompt,
                            const std::vector<int64_t>& output) {
  std::vector<float> scores(logits, logits + vocab);
  if (s.repetition_penalty != 1.0) {
    const float p = static_cast<float>(s.repetition_penalty);
    std::vector<bool> seen(vocab, false);
    for (const auto* tokens : {&prompt, &output})
      for (int64_t t : *tokens)
        if (t >= 0 && t < vocab) seen[t] = true;
    for (int64_t i = 0; i < vocab; ++i)
      if (seen[i]) scores[i] = scores[i] < 0 ? scores[i] * p : scores[i] / p;
  }
  if ((s.presence_penalty != 0.0 || s.frequency_penalty != 0.0) && !output.empty()) {
    std::vector<int64_t> counts(vocab, 0);
    for (int64_t t : output)
      if (t >= 0 && t < vocab) ++counts[t];
    // as numpy computes it: float32 penalties widened to double with the count, the sum rounded to float32
    const double presence = static_cast<float>(s.presence_penalty), frequency = static_cast<float>(s.frequency_penalty);
    for (int64_t i = 0; i < vocab; ++i)
      if (counts[i]) scores[i] -= static_cast<float>(frequency * static_cast<double>(counts[i]) + presence);
  }
  return scores;
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

int64_t Sampler::operator()(const float* logits, int64_t vocab, const std::vector<int64_t>& prompt, const std::vector<int64_t>& output) {
  if (!sampling_.penalized()) return (*this)(logits, vocab);
  const std::vector<float> scores = penalize(logits, vocab, sampling_, prompt, output);
  return (*this)(scores.data(), vocab);
}

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
