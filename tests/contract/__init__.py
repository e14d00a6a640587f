"""cirelay's published contract held to the code: the OpenAPI document (drift, validity,
fuzzing a live server, a generated client), the event catalogue and the AsyncAPI document."""
