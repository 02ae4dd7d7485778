// The notification endpoint and client (contract in dws/notify.h), on cpp-httplib.
#include "dws/notify.h"

#include <httplib.h>

#include <condition_variable>
#include <mutex>
#include <thread>

namespace dws {

namespace {

bool is_loopback(const std::string& host) {
  return host == "127.0.0.1" || host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// Compares without an early exit, so response timing does not reveal a token prefix.
bool same_secret(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

class HttpListener final : public NotifyListener {
 public:
  Status start(const std::string& host, int port, const std::string& token) {
    token_ = token;
    server_.Post("/v1/notify", [this](const httplib::Request& req, httplib::Response& res) {
      if (!token_.empty() && !same_secret(req.get_header_value("Authorization"), "Bearer " + token_)) {
        refused_.fetch_add(1);
        res.status = 401;
        res.set_content("missing or wrong token\n", "text/plain");
        return;
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++pending_;
        ++accepted_;
      }
      cv_.notify_all();
      res.set_content("ok\n", "text/plain");
    });
    server_.set_read_timeout(5, 0);
    if (port == 0) {
      port_ = server_.bind_to_any_port(host);
      if (port_ <= 0) return make_error(ErrorCode::kIo, "notify: cannot bind " + host + " (any port)");
    } else {
      if (!server_.bind_to_port(host, port)) {
        return make_error(ErrorCode::kIo, "notify: cannot bind " + host + ":" + std::to_string(port) + " (in use, or not an address here)");
      }
      port_ = port;
    }
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    // stop() before the accept loop runs would be lost and the destructor's join would hang: return
    // only once the server is running.
    for (int i = 0; i < 5000 && !server_.is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (!server_.is_running()) return make_error(ErrorCode::kIo, "notify: the listener on " + host + " did not start");
    return Status::Ok();
  }

  ~HttpListener() override {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }

  bool wait(double timeout_seconds) override {
    std::unique_lock<std::mutex> lock(mu_);
    const bool woke = cv_.wait_for(lock, std::chrono::duration<double>(timeout_seconds), [this] { return pending_ > 0; });
    pending_ = 0;
    return woke;
  }
  uint16_t port() const override { return static_cast<uint16_t>(port_); }
  uint64_t notifications() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return accepted_;
  }
  uint64_t refused() const override { return refused_.load(); }

 private:
  httplib::Server server_;
  std::thread thread_;
  std::string token_;
  int port_ = 0;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  uint64_t pending_ = 0, accepted_ = 0;
  std::atomic<uint64_t> refused_{0};
};

}  // namespace

Result<std::unique_ptr<NotifyListener>> NotifyListener::start(const std::string& address, const std::string& token) {
  const size_t colon = address.rfind(':');
  if (colon == std::string::npos) return make_error(ErrorCode::kInvalidArgument, "notify: --listen '" + address + "' is not HOST:PORT");
  std::string host = address.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "127.0.0.1";
  int port = -1;
  try {
    size_t used = 0;
    port = std::stoi(address.substr(colon + 1), &used);
    if (used != address.size() - colon - 1) port = -1;
  } catch (...) {
    port = -1;
  }
  if (port < 0 || port > 65535) return make_error(ErrorCode::kInvalidArgument, "notify: --listen '" + address + "' has no valid port");
  if (!is_loopback(host) && token.empty()) {
    return make_error(ErrorCode::kInvalidArgument, "notify: listening on non-loopback address " + host +
                                                       " needs a shared token (--notify-token-file or DWS_NOTIFY_TOKEN)");
  }
  auto listener = std::make_unique<HttpListener>();
  DWS_RETURN_IF_ERROR(listener->start(host, port, token));
  return std::unique_ptr<NotifyListener>(std::move(listener));
}

std::vector<std::string> notify_receivers(const std::vector<std::string>& urls, uint64_t version, const std::string& token,
                                          double timeout_seconds) {
  std::vector<std::string> failures;
  const auto timeout = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::duration<double>(timeout_seconds));
  for (const std::string& url : urls) {
    // Split "scheme://host:port[/path]".
    const size_t scheme_end = url.find("://");
    const size_t path_at = url.find('/', scheme_end == std::string::npos ? 0 : scheme_end + 3);
    const std::string origin = path_at == std::string::npos ? url : url.substr(0, path_at);
    std::string path = path_at == std::string::npos ? "" : url.substr(path_at);
    if (path.empty() || path == "/") path = "/v1/notify";
    httplib::Client client(origin);
    if (!client.is_valid()) {
      failures.push_back(url + ": not an http(s) URL");
      continue;
    }
    client.set_connection_timeout(timeout);
    client.set_read_timeout(timeout);
    client.set_write_timeout(timeout);
    httplib::Headers headers;
    if (!token.empty()) headers.emplace("Authorization", "Bearer " + token);
    auto res = client.Post(path, headers, "{\"version\": " + std::to_string(version) + "}\n", "application/json");
    if (!res) {
      failures.push_back(url + ": " + httplib::to_string(res.error()));
    } else if (res->status != 200) {
      failures.push_back(url + ": HTTP " + std::to_string(res->status));
    }
  }
  return failures;
}

}  // namespace dws
