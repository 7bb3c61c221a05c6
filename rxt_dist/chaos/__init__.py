"""The fault suite of the serving app: a retrying chat client, fault injection, an HTTP fuzzer
and the final verdict (see docs/serving.md, "Fault suite").

``client``, ``fuzz`` and ``verdict`` are Ray-free; ``inject`` kills Ray actors of a running
cluster (the caller has joined it). Nothing runs at import.
"""
