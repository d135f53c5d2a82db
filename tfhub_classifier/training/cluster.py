"""A multi-worker cluster losing a worker: which one, and how to go on.

Every worker takes part in each step's gradient exchange (a collective op). When one dies, the others'
exchange fails at once if its connection drops (UnavailableError: the peer reset it), or, if it hangs
or its machine vanishes, after --collective-timeout-s (DeadlineExceededError, from the strategy's
CommunicationOptions); TensorFlow's coordination service may also report it (stopped heartbeats).
Either way each survivor stops with one line naming the lost task; the checkpoints stay, so the same
command relaunched on every worker resumes.
"""
import json
import os
import re

from tfhub_classifier.runtime import tf

# The errors a collective op ends with when a peer is gone (not, e.g., out of memory).
LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
                    tf.errors.CancelledError)
TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
# What TensorFlow's messages say when the failure is the cluster's (a collective op or the coordination
# service), not, e.g., a remote file system's.
CLUSTER_FAILURE = re.compile(r"collective|RingReduce|RecvBuf|heartbeat|coordination|/job:", re.IGNORECASE)


class WorkerLost(ValueError):
    """A worker of the cluster was lost mid-run; the message names it and how to resume."""


def is_lost_peer(error):
    """Whether error says a peer of the cluster is gone (not, e.g., that a remote file system failed)."""
    return isinstance(error, LOST_PEER_ERRORS) and bool(CLUSTER_FAILURE.search(str(error)))


def lost_worker(error, collective_timeout_s, work_dir):
    """WorkerLost for an error that says a peer is gone, else None (the error is something else)."""
    text = str(error)
    if not is_lost_peer(error):
        return None
    settings = json.loads(os.environ.get("TF_CONFIG") or "{}")
    cluster, task = settings.get("cluster", {}), settings.get("task", {})
    others = [(job, index) for job, addresses in cluster.items() if job != "evaluator"
              for index in range(len(addresses)) if (job, index) != (task.get("type"), task.get("index"))]
    # The error names the lost task if TensorFlow knew it; a timeout doesn't, but a pair has one suspect.
    named = list(dict.fromkeys((job, int(index)) for job, index in TASK.findall(text) if (job, int(index)) in others))
    suspects = named or others
    names = [f"{job} {index} ({cluster[job][index]})" for job, index in suspects]
    who = names[0] if len(names) == 1 else f"one of {', '.join(names)}" if names else "a worker"
    if isinstance(error, tf.errors.DeadlineExceededError):
        how = (f"no answer within --collective-timeout-s {collective_timeout_s:g}; if it was only slow, raise "
               "--collective-timeout-s")
    elif "heartbeat" in text:
        how = "it stopped sending heartbeats"
    else:
        how = "its connection dropped"
    return WorkerLost(f"{who} was lost mid-training ({how}), so this worker stopped; relaunch every worker with "
                      f"the same command to resume from the last checkpoint in {work_dir}")

