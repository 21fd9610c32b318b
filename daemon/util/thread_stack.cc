#include "util/thread_stack.h"

#include <pthread.h>

#include <system_error>

namespace mqs::util {

bool EnsureThreadStacks(std::string* error) {
  pthread_attr_t attr;
  int rc = pthread_getattr_default_np(&attr);
  if (rc != 0) {
    *error = std::generic_category().message(rc);
    return false;
  }
  size_t size = 0;
  rc = pthread_attr_getstacksize(&attr, &size);
  if (rc == 0 && size < kThreadStackBytes) {
    rc = pthread_attr_setstacksize(&attr, kThreadStackBytes);
    if (rc == 0) rc = pthread_setattr_default_np(&attr);
  }
  pthread_attr_destroy(&attr);
  if (rc != 0) {
    *error = std::generic_category().message(rc);
    return false;
  }
  return true;
}

}  // namespace mqs::util
