#pragma once
// libuv handle helpers. Every handle stores its owner in handle->data right after uv_*_init;
// callbacks recover it with ownerOf<T>() on their first line.

#include <uv.h>

namespace upgate {

template <typename T, typename H>
inline T* ownerOf(H* handle) {
  return static_cast<T*>(reinterpret_cast<uv_handle_t*>(handle)->data);
}

template <typename H>
inline uv_handle_t* asHandle(H* handle) {
  return reinterpret_cast<uv_handle_t*>(handle);
}

template <typename H>
inline uv_stream_t* asStream(H* handle) {
  return reinterpret_cast<uv_stream_t*>(handle);
}

}  // namespace upgate
