// The --backend decision of chatradio-server, apart from the loading itself so
// that it can be tested without a GPU: the loaders are inputs, and so is the
// number of GPUs present.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "model/backend.h"
#include "model/errors.h"

namespace chatradio::service {

using BackendLoader = std::function<std::unique_ptr<model::Backend>()>;

struct ChosenBackend {
  std::unique_ptr<model::Backend> backend;
  std::string name;             // "cpu" or "cuda"
  std::string fallback_reason;  // why --backend auto left a present GPU unused; empty otherwise
};

// requested: "cpu" | "cuda" | "auto" (options.cpp allows nothing else). gpus:
// usable GPUs. load_cuda: the CUDA backend's loader, empty in a build without
// CUDA; it throws ModelError for a model the GPU backend refuses (act-order
// GPTQ, hidden size not a multiple of 32, head_dim above 256, out of GPU
// memory). load_cpu: the CPU backend's loader.
//   cpu:  the CPU backend.
//   cuda: the CUDA backend, or its error (loudly: the operator asked for the GPU).
//   auto: the CUDA backend when a GPU is present and it takes the model; when it
//         refuses, the CPU backend (which supports every model the loader
//         reads) with the refusal as fallback_reason, for the log.
inline ChosenBackend choose_backend(const std::string& requested, int gpus, const BackendLoader& load_cuda,
                                    const BackendLoader& load_cpu) {
  ChosenBackend c;
  if (requested == "cuda") {
    if (!load_cuda) {
      throw model::ModelError("--backend cuda: this build of chatradio-server has no CUDA backend (no nvcc at build time)");
    }
    c.backend = load_cuda();
    c.name = "cuda";
    return c;
  }
  if (requested == "auto" && load_cuda && gpus > 0) {
    try {
      c.backend = load_cuda();
      c.name = "cuda";
      return c;
    } catch (const model::ModelError& e) {
      c.fallback_reason = e.what();
    }
  }
  c.backend = load_cpu();
  c.name = "cpu";
  return c;
}

}  // namespace chatradio::service
