// Thread stacks large enough for what rabbitmq-c decodes.
#pragma once

#include <cstddef>
#include <string>

namespace mqs::util {

// kThreadStackBytes: rabbitmq-c 0.11 decodes nested AMQP tables and arrays
// recursively with no depth limit (upstream added one in 2023, rabbitmq-c
// pull requests 763 and 764), 80-160 bytes of stack per level. Any client of the broker can publish
// a header nested ~26,000 deep in one 128 KiB frame (the frame_max the daemon asks for): measured,
// decoding it needs more than 2 MiB and less than 4 MiB. Threads otherwise get RLIMIT_STACK, which
// an operator may have set lower. Only touched pages count towards memory use.
inline constexpr size_t kThreadStackBytes = size_t{16} * 1024 * 1024;

// EnsureThreadStacks makes threads created from now on get at least
// kThreadStackBytes of stack (glibc's process-wide default thread
// attributes). Call it first in main, before any thread starts. False (with
// errno's message in *error) when the default cannot be read or set.
bool EnsureThreadStacks(std::string* error);

}  // namespace mqs::util
