"""The HTTP API, one router per concern; `create_app` includes them in this order.

A generation is two requests: POST /api/generate (or /api/inpaint) checks everything and queues a
job, answering 202 with its id, 503 "busy, retry" when the queue is full, or a 4xx that says what
is wrong; GET /api/jobs/{id}/events then streams the job's frames as server-sent events, at most
`frames_per_second`, the latest frame winning. Closing that stream (closing the tab) cancels the job.

`pages`: the page and the models on offer · `submit`: queueing jobs · `watch`: a job's state, its
stream, cancelling · `downloads`: a job's result, animation, input and mask.
"""
