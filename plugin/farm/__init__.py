"""Render-farm jobs on existing engines (Open Job Description / AWS Deadline Cloud, Deadline 10).

`keyprop farm submit` writes the job files (jobs.py); the tasks run `keyprop run` on chunks
of frames. See docs/farm.md.
"""
