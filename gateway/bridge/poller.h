#pragma once
// One upstream long-poll loop for one channel, shared by every subscriber in the process. It
// lives on the channel's owner worker (Hub::ownerOf) and publishes what the legacy app answers
// through the Hub, so subscribers on every worker get the same messages in the same order.
//
//   poll -> 200 with a body: split into messages, publish, advance the cursor, poll again
//           (no cursor in it: back off, as the same answer may come again)
//        -> 204 / 304 / empty body / our own timeout: poll again at once
//        -> anything else (connect error, 5xx, an answer over longpoll.max_response_bytes,
//           ...): back off exponentially with jitter
// The cursor survives upstream restarts: a failed poll never moves it, so the next successful
// poll resumes where the last one ended and nothing published upstream is skipped.

#include <uv.h>

#include <memory>
#include <string>

#include "bridge/hub.h"
#include "config/config.h"
#include "proxy/generation.h"
#include "proxy/http_client.h"

namespace upgate {

class Worker;

// How an answer of the legacy app (to a poll, or to a client's message) goes to WebSocket
// clients: binary when its Content-Type says application/octet-stream or its body is not valid
// UTF-8 (a text message must be), else text.
bool isBinaryAnswer(const HttpResponse& response);

// The poll a subscriber's request starts under a long-poll route: the route's poll template
// expanded (all but {cursor}) and the request's `poll_forward_headers`, with `origin` kept.
PollRequest makePollRequest(const LongPollConfig& lp, std::shared_ptr<const RequestHead> origin);

class Poller {
 public:
  // `poll` comes from makePollRequest; its headers go with every poll, after the route's own.
  // `route` belongs to `generation`.
  Poller(Worker& worker, std::string channel, GenerationPtr generation, const RouteConfig& route,
         PollRequest poll);
  Poller(const Poller&) = delete;
  Poller& operator=(const Poller&) = delete;

  void start();
  // Subscribers came back during the grace period: keep polling.
  void keep();
  // The last subscriber left: stop after the route's grace period (keep() cancels it).
  void releaseAfterGrace();
  // Stops at once and deletes itself once its timers are closed (no callback runs after).
  void destroy();
  // A reload: poll as `generation`'s route of the same name (or, renamed, the route it picks for
  // the first subscriber's request) says from now on, the poll made again from that request.
  // When that changes what is polled, or from where (upstream, its endpoints or TLS settings,
  // target, headers, timeout), the poll in flight or a backoff wait is given up and the next
  // poll goes out at once with the same cursor. Kept as it was when there is no such long-poll
  // route, it keys the request to another channel, or `generation` is not newer than its own.
  void follow(const GenerationPtr& generation);

  const std::string& cursor() const { return cursor_; }
  uint64_t polls() const { return polls_; }

 private:
  ~Poller();
  static void onRetryTimer(uv_timer_t* t) noexcept;
  static void onGraceTimer(uv_timer_t* t) noexcept;
  static void onClosed(uv_handle_t* h) noexcept;

  void poll();
  void count(const char* result);  // upgate_longpoll_polls_total{route, result}
  void onResponse(const std::string& error, HttpResponse& response);
  void publishBody(const HttpResponse& response);
  bool advanceCursor(const HttpResponse& response);
  void backoff(const std::string& why);  // a failed poll: logged, retried after retryLater()
  // Starts the retry timer for the route's backoff (exponential in failures_, with jitter) and
  // counts the failure; returns the delay in ms.
  uint64_t retryLater();
  // What the next poll's request depends on, as text: equal when two configurations poll alike.
  std::string signature() const;

  Worker& worker_;
  const std::string channel_;
  GenerationPtr generation_;
  const RouteConfig* route_;  // in generation_
  PollRequest poll_;
  std::string cursor_;
  std::shared_ptr<HttpClient::Call> call_;  // the in-flight poll (cancelled on stop)
  uv_timer_t retry_timer_{};
  uv_timer_t grace_timer_{};
  int open_timers_ = 0;
  uint64_t polls_ = 0;
  unsigned failures_ = 0;
  bool stopping_ = false;
};

}  // namespace upgate
