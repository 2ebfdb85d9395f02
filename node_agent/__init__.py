"""The hospital-side node agent: data sources, policy, the task loop, the MPC party runner.

It talks to the coordinator over HTTP only (outbound), never imports `api`, and never sends a
row or its own un-pooled summary anywhere: summaries go only into its own MPC party process.
"""
