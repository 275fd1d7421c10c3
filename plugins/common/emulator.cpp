#include "emulator.h"

#include <ucontext.h>

#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <vector>

namespace ndp_emu {

thread_local ThreadContext const* gContext = nullptr;

namespace {

enum class FiberState { kRUNNABLE, kAT_BARRIER, kAT_WARP_STEP, kDONE };

struct Fiber {
  ucontext_t context;
  ThreadContext thread;
  FiberState state;
  std::unique_ptr<char[]> stack;
};

struct Block {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  Fiber* current{nullptr};
  std::function<void()> const* body{nullptr};
  std::vector<double> exchange;
};

thread_local Block* gBlock = nullptr;
constexpr size_t kStackBytes = 128 * 1024;  // kernels keep a few small arrays per thread

void fiberEntry() {
  (*gBlock->body)();
  gBlock->current->state = FiberState::kDONE;
  // returning resumes uc_link, the scheduler
}

void yieldAs(FiberState state) {
  Fiber* self = gBlock->current;
  self->state = state;
  swapcontext(&self->context, &gBlock->scheduler);
}

void resume(Block& block, Fiber& fiber) {
  block.current = &fiber;
  gContext = &fiber.thread;
  fiber.state = FiberState::kRUNNABLE;
  swapcontext(&block.scheduler, &fiber.context);
}

void runBlock(Block& block) {
  for (;;) {
    bool anyLive = false;
    bool anyStepped = false;
    for (Fiber& fiber : block.fibers) {
      if (fiber.state == FiberState::kRUNNABLE || fiber.state == FiberState::kAT_WARP_STEP) {
        resume(block, fiber);
        anyStepped = true;
      }
      anyLive = anyLive || fiber.state != FiberState::kDONE;
    }
    if (!anyLive) {
      return;
    }
    if (!anyStepped) {
      // every live fiber waits at __syncthreads: release them all
      for (Fiber& fiber : block.fibers) {
        if (fiber.state == FiberState::kAT_BARRIER) {
          fiber.state = FiberState::kRUNNABLE;
        }
      }
    }
  }
}

}  // namespace

void launch(dim3 grid, dim3 block, std::function<void()> const& body) {
  uint32_t const nThreads = block.x * block.y * block.z;
  Block b;
  b.body = &body;
  b.fibers.resize(nThreads);
  b.exchange.assign(nThreads, 0.0);
  for (Fiber& f : b.fibers) {
    f.stack.reset(new char[kStackBytes]);  // not zeroed: a fresh stack needs no contents
  }
  Block* const outer = gBlock;
  gBlock = &b;
  for (uint32_t bz = 0; bz < grid.z; ++bz)
    for (uint32_t by = 0; by < grid.y; ++by)
      for (uint32_t bx = 0; bx < grid.x; ++bx) {
        uint32_t t = 0;
        for (uint32_t tz = 0; tz < block.z; ++tz)
          for (uint32_t ty = 0; ty < block.y; ++ty)
            for (uint32_t tx = 0; tx < block.x; ++tx, ++t) {
              Fiber& f = b.fibers[t];
              f.thread = ThreadContext{uint3{tx, ty, tz}, uint3{bx, by, bz}, block, grid};
              f.state = FiberState::kRUNNABLE;
              getcontext(&f.context);
              f.context.uc_stack.ss_sp = f.stack.get();
              f.context.uc_stack.ss_size = kStackBytes;
              f.context.uc_link = &b.scheduler;
              makecontext(&f.context, fiberEntry, 0);
            }
        runBlock(b);
      }
  gBlock = outer;
  gContext = nullptr;
}

void syncThreads() { yieldAs(FiberState::kAT_BARRIER); }

void warpStep() { yieldAs(FiberState::kAT_WARP_STEP); }

double& exchangeSlot(uint32_t flatThread) { return gBlock->exchange.at(flatThread); }

}  // namespace ndp_emu
