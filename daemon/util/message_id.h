// Message ids the sidecar generates when a publisher leaves message_id empty.
#pragma once

#include <string>

namespace mqs::util {

// NewMessageId returns a random (version 4) UUID in its canonical text form.
// Each thread has its own generator, seeded from the OS, so no lock is taken.
std::string NewMessageId();

}  // namespace mqs::util
