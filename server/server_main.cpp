// chatradio-server: the gRPC impression service (server/service/, docs/service.md).
//
// Signals: SIGTERM and SIGINT are blocked in every thread before any thread
// starts, and one thread takes them with sigwait(), so no code runs inside a
// signal handler and no global state is needed. That thread drains the server
// (health NOT_SERVING, no new calls, in-flight ones finish up to
// --drain-timeout) and main then exits 0.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <exception>
#include <thread>

#include "model/errors.h"
#include "server/prompt/templates.h"
#include "server/service/options.h"
#include "server/service/server.h"

namespace {

using chatradio::service::ChatradioServer;

// The signal thread's wake-up for "main is done without a drain" (the model
// failed to load); any other SIGUSR1 is ignored.
constexpr int kWakeSignal = SIGUSR1;

int run(int argc, char** argv) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, kWakeSignal);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // inherited by every thread started later

  chatradio::service::ServerOptions opts;
  try {
    if (!chatradio::service::parse_options(opts, argc, const_cast<const char* const*>(argv))) {
      std::fputs(chatradio::service::help_text().c_str(), stdout);
      return 0;
    }
  } catch (const chatradio::service::OptionsError& e) {
    std::fprintf(stderr, "chatradio-server: %s\n", e.what());
    return 2;
  }

  ChatradioServer server(opts);
  try {
    server.start();
  } catch (const chatradio::service::OptionsError& e) {
    std::fprintf(stderr, "chatradio-server: %s\n", e.what());
    return 2;
  } catch (const chatradio::prompt::ConfigError& e) {
    std::fprintf(stderr, "chatradio-server: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "chatradio-server: %s\n", e.what());
    return 1;
  }

  std::atomic<bool> main_done{false};
  std::thread signal_thread([&] {
    for (;;) {
      int sig = 0;
      if (sigwait(&signals, &sig) != 0) continue;
      if (sig == kWakeSignal) {
        if (main_done.load()) return;
        continue;
      }
      server.log().event("signal", {{"signal", std::string(sig == SIGTERM ? "SIGTERM" : "SIGINT")}});
      server.drain();
      if (!server.ready()) {
        // Still loading the model: nothing was ever served, so there is
        // nothing to finish, and loading cannot be interrupted. Leave now.
        server.log().event("exit", {{"code", int64_t{0}}, {"reason", std::string("signal while loading")}});
        std::fflush(nullptr);
        _exit(0);
      }
      return;
    }
  });

  int code = 0;
  try {
    server.load_and_warm_up();
  } catch (const std::exception& e) {
    server.log().event("error", {{"phase", std::string("load")}, {"message", std::string(e.what())}});
    std::fprintf(stderr, "chatradio-server: %s\n", e.what());
    code = 1;
  }
  if (code != 0) {
    main_done = true;
    pthread_kill(signal_thread.native_handle(), kWakeSignal);
  }
  signal_thread.join();  // returns after a drain (or the wake-up above)
  if (code == 0) server.log().event("exit", {{"code", int64_t{0}}});
  return code;
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
