// An ordinary shared library that knows nothing of modevisor.
extern "C" __attribute__((visibility("default"))) int unrelated_answer() { return 42; }
