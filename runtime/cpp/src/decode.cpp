#include "nemotron_deploy/decode.h"

#include <algorithm>

#include "nemotron_deploy/error.h"

namespace nemotron_deploy {

void check_prompts(const std::vector<std::vector<int64_t>>& prompts, int64_t vocab_size, int64_t max_length) {
  if (prompts.empty()) throw Error("no prompt given");
  for (size_t i = 0; i < prompts.size(); ++i) {
    const std::string which = "prompt " + std::to_string(i);
    if (prompts[i].empty()) throw Error(which + " is empty");
    for (int64_t t : prompts[i])
      if (t < 0 || t >= vocab_size)
        throw Error(which + ": token id " + std::to_string(t) + " is outside the vocabulary (0.." + std::to_string(vocab_size - 1) + ")");
    if (static_cast<int64_t>(prompts[i].size()) > max_length)
      throw Error(which + " has " + std::to_string(prompts[i].size()) + " tokens, the model's maximum is " + std::to_string(max_length) +
                  " (max_position_embeddings)");
  }
}

namespace {

// Columns [start, end) of a (rows, width) row-major matrix.
std::vector<int64_t> columns(const std::vector<int64_t>& m, int64_t rows, int64_t width, int64_t start, int64_t end) {
  std::vector<int64_t> out;
  out.reserve(rows * (end - start));
  for (int64_t r = 0; r < rows; ++r) out.insert(out.end(), m.begin() + r * width + start, m.begin() + r * width + end);
  return out;
}

}  // namespace

Generation generate(StepEngine& engine, const std::vector<std::vector<int64_t>>& prompts, const GenerateOptions& options) {
  const int64_t vocab = engine.vocab_size();
  check_prompts(prompts, vocab, options.max_length);
  if (options.max_new_tokens < 1) throw Error("max_new_tokens " + std::to_string(options.max_new_tokens) + ": expected >= 1");
  if (options.prefill_chunk_size && *options.prefill_chunk_size < 1)
    throw Error("prefill chunk size " + std::to_string(*options.prefill_chunk_size) + ": expected >= 1");
  const int64_t batch = static_cast<int64_t>(prompts.size());
  size_t longest = 0;
  for (const auto& p : prompts) longest = std::max(longest, p.size());
  int64_t width = static_cast<int64_t>(longest);

  // left-padded prompts and their mask
  std::vector<int64_t> ids(batch * width, options.pad_token_id), mask(batch * width, 0);
  for (int64_t r = 0; r < batch; ++r) {
    const int64_t offset = width - static_cast<int64_t>(prompts[r].size());
    std::copy(prompts[r].begin(), prompts[r].end(), ids.begin() + r * width + offset);
    std::fill(mask.begin() + r * width + offset, mask.begin() + (r + 1) * width, 1);
  }

  engine.reset(batch);
  const int64_t chunk = options.prefill_chunk_size.value_or(width);
  const float* logits = nullptr;
  for (int64_t start = 0; start < width; start += chunk) {
    const int64_t end = std::min(start + chunk, width);
    logits = engine.step(Graph::Prefill, columns(ids, batch, width, start, end), end - start, columns(mask, batch, width, 0, end), end);
  }

  Sampler sampler(options.sampling);
  Generation out{std::vector<std::vector<int64_t>>(batch), std::vector<std::string>(batch, "length")};
  std::vector<bool> done(batch, false);
  std::vector<int64_t> tokens(batch);
  for (int64_t step = 0; step < options.max_new_tokens; ++step) {
    for (int64_t r = 0; r < batch; ++r) tokens[r] = sampler(logits + r * vocab, vocab, prompts[r], out.new_token_ids[r]);
    for (int64_t r = 0; r < batch; ++r) {
      if (done[r]) continue;
      out.new_token_ids[r].push_back(tokens[r]);
      if (options.on_token) options.on_token(r, tokens[r]);
      const auto& eos = options.eos_token_ids;
      if (std::find(eos.begin(), eos.end(), tokens[r]) != eos.end()) {
        done[r] = true;
        out.finish_reasons[r] = "eos";
      } else if (static_cast<int64_t>(prompts[r].size() + out.new_token_ids[r].size()) >= options.max_length) {
        done[r] = true;
      }
    }
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; }) || step == options.max_new_tokens - 1) break;
    for (int64_t r = 0; r < batch; ++r)
      if (done[r]) tokens[r] = options.pad_token_id;  // finished rows keep stepping; their output is ignored
    std::vector<int64_t> grown;
    grown.reserve(batch * (width + 1));
    for (int64_t r = 0; r < batch; ++r) {
      grown.insert(grown.end(), mask.begin() + r * width, mask.begin() + (r + 1) * width);
      grown.push_back(1);
    }
    mask.swap(grown);
    ++width;
    logits = engine.step(Graph::Decode, tokens, 1, mask, width);
  }
  return out;
}

}  // namespace nemotron_deploy
