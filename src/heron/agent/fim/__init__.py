"""File integrity monitoring: the policy (what to watch), hashing, the persistent baseline and the
baseline scan. The real-time sources (fanotify, inotify) live in ``heron.agent.sources.file`` and
use these modules."""
