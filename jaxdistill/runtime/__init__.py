"""Process-level concerns: the device mesh and sharding rules, multi-host start-up, host
memory, and the paths (local or bucket) a process writes under."""
