// thread_pool.h — a fixed set of workers for data-parallel loops (internal).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dws {

class ThreadPool {
 public:
  // threads == 0 means std::thread::hardware_concurrency(). The calling thread is one of them: a pool of
  // N threads starts N-1 workers.
  explicit ThreadPool(size_t threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  size_t threads() const { return workers_.size() + 1; }

  // Calls fn(i) for every i in [0, n), tasks claimed dynamically; returns when all are done.
  // fn must not throw. Not reentrant: one parallel_for at a time per pool.
  void parallel_for(size_t n, const std::function<void(size_t)>& fn);

 private:
  void worker_loop();
  void run_tasks();

  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable wake_;
  std::condition_variable done_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t n_ = 0;
  size_t next_ = 0;
  size_t active_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

size_t resolve_thread_count(size_t requested);

}  // namespace dws
