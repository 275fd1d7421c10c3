// The decode loop, as runtime/decode.py runs it: left-padded (optionally chunked) prefill, then one
// token per step until EOS or the token budget. An engine only has to provide `reset` and `step`.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "nemotron_deploy/sampling.h"

namespace nemotron_deploy {

enum class Graph { Prefill, Decode };

// One step of the step model for a batch; the engine keeps the states (on its device) between calls.
class StepEngine {
 public:
  virtual ~StepEngine() = default;
  virtual int64_t vocab_size() const = 0;
  // Zero states for `batch` new sequences (K/V with past length 0).
  virtual void reset(int64_t batch) = 0;
  // ids: (batch, new_tokens) int64 row-major; mask: (batch, total_len) int64, 1 real, 0 left padding,
  // over the past and the new tokens. Returns the last position's logits, (batch, vocab) float32 on
  // the host, valid until the next call.
  virtual const float* step(Graph graph, const std::vector<int64_t>& ids, int64_t new_tokens, const std::vector<int64_t>& mask,
                            int64_t total_len) = 0;
};

struct GenerateOptions {
  int64_t max_new_tokens = 64;
  Sampling sampling;
  std::vector<int64_t> eos_token_ids;  // empty: run to the budget (ignore_eos)
  int64_t pad_token_id = 0;
  int64_t max_length = 0;  // the model's maximum tokens per sequence (prompt + new)
  std::optional<int64_t> prefill_chunk_size;
  std::function<void(int64_t row, int64_t token)> on_token;  // streams each new token
};

struct Generation {
  std::vector<std::vector<int64_t>> new_token_ids;  // per prompt; EOS included when it ended the sequence
  std::vector<std::string> finish_reasons;          // "eos" | "length"
};

// Throws Error naming the prompt when one is empty, has an id outside the vocabulary or is too long.
void check_prompts(const std::vector<std::vector<int64_t>>& prompts, int64_t vocab_size, int64_t max_length);

Generation generate(StepEngine& engine, const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options);

}  // namespace nemotron_deploy
