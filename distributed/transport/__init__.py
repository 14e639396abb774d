"""Transport: the communicator, requests, GPU staging, NCCL and where this rank stands in the job."""
