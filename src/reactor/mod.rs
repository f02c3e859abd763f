//! Reactor threads: event loop, connections, timers, write queues.
