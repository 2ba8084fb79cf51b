#include "net/listener.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/handle.h"
#include "core/log.h"

namespace upgate {

namespace {

// Dotted quad without inet_ntop, which formats each byte through sprintf: this runs for every
// accepted connection.
size_t formatIpv4(const in_addr& a, char* out) {
  const auto* b = reinterpret_cast<const unsigned char*>(&a.s_addr);
  char* p = out;
  for (int i = 0; i < 4; ++i) {
    unsigned v = b[i];
    if (v >= 100) *p++ = static_cast<char>('0' + v / 100);
    if (v >= 10) *p++ = static_cast<char>('0' + v / 10 % 10);
    *p++ = static_cast<char>('0' + v % 10);
    if (i < 3) *p++ = '.';
  }
  *p = '\0';
  return static_cast<size_t>(p - out);
}

}  // namespace

std::string formatSockaddr(const sockaddr* sa, std::string* ip_only, uint16_t* port) {
  char ip[INET6_ADDRSTRLEN] = "?";
  size_t ip_len = 1;
  uint16_t p = 0;
  bool v6 = sa->sa_family == AF_INET6;
  if (v6) {
    const auto* s6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
    ip_len = std::strlen(ip);
    p = ntohs(s6->sin6_port);
  } else if (sa->sa_family == AF_INET) {
    const auto* s4 = reinterpret_cast<const sockaddr_in*>(sa);
    ip_len = formatIpv4(s4->sin_addr, ip);
    p = ntohs(s4->sin_port);
  }
  if (ip_only) ip_only->assign(ip, ip_len);
  if (port) *port = p;
  char port_text[8];
  size_t port_len = 0;
  for (unsigned v = p;; v /= 10) {  // digits in reverse, then flipped
    port_text[port_len++] = static_cast<char>('0' + v % 10);
    if (v < 10) break;
  }
  std::string out;
  out.reserve(ip_len + port_len + 3);
  if (v6) out.push_back('[');
  out.append(ip, ip_len);
  if (v6) out.push_back(']');
  out.push_back(':');
  while (port_len > 0) out.push_back(port_text[--port_len]);
  return out;
}

int openListenSocket(const HostPort& address, int backlog, bool delay_first_ack, std::string& bound,
                     std::string& err) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  std::string port = std::to_string(address.port);
  int gai = getaddrinfo(address.host.empty() ? nullptr : address.host.c_str(), port.c_str(), &hints,
                        &res);
  if (gai != 0) {
    err = address.text() + ": cannot resolve: " + gai_strerror(gai);
    return -1;
  }
  int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    err = std::string("socket: ") + std::strerror(errno);
    freeaddrinfo(res);
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  // libuv 1.44 has no flag for SO_REUSEPORT: set it before bind, then hand the fd to uv_tcp_open.
  setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
  if (res->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));  // inherited at accept
  if (bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, backlog) != 0) {
    err = address.text() + ": " + std::strerror(errno);
    freeaddrinfo(res);
    ::close(fd);
    return -1;
  }
  freeaddrinfo(res);
  if (delay_first_ack) {
    // After listen(): listen() resets the delayed-ACK state that TCP_QUICKACK = 0 sets.
    int zero = 0;
    setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &zero, sizeof(zero));
  }
  sockaddr_storage ss{};
  socklen_t len = sizeof(ss);
  getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  bound = formatSockaddr(reinterpret_cast<sockaddr*>(&ss));
  return fd;
}

int Listener::open(uv_loop_t* loop, int fd, int backlog) {
  int rc = uv_tcp_init(loop, &tcp_);
  if (rc != 0) {
    ::close(fd);
    return rc;
  }
  tcp_.data = this;
  open_ = true;
  rc = uv_tcp_open(&tcp_, fd);
  if (rc != 0) {
    ::close(fd);  // the handle did not adopt it
    return rc;
  }
  return uv_listen(asStream(&tcp_), backlog, onConnection);
}

void Listener::reconfigure(int backlog, bool delay_first_ack) {
  uv_os_fd_t fd;
  if (!open_ || uv_fileno(asHandle(&tcp_), &fd) != 0) return;
  // listen() on a listening socket only sets the backlog (Linux); the delayed-ACK choice is a
  // socket option the next accepted sockets inherit (see openListenSocket).
  ::listen(fd, backlog);
  int quickack = delay_first_ack ? 0 : 1;
  setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &quickack, sizeof(quickack));
}

void Listener::onConnection(uv_stream_t* server, int status) noexcept {
  auto* self = ownerOf<Listener>(server);
  if (status < 0) {
    // EMFILE and friends: the connection stays in the backlog; say why once per event.
    UPGATE_LOG(warn, 0, "listener {}: accept failed: {}", self->config_->name, uv_strerror(status));
    return;
  }
  self->on_accept_(*self, server);
}

void Listener::close(std::function<void()> done) {
  if (!open_) {
    if (done) done();
    return;
  }
  open_ = false;
  on_closed_ = std::move(done);
  uv_close(asHandle(&tcp_), onClose);
}

void Listener::onClose(uv_handle_t* h) noexcept {
  auto* self = ownerOf<Listener>(h);
  std::function<void()> done = std::move(self->on_closed_);  // `done` may delete self
  if (done) done();
}

}  // namespace upgate
