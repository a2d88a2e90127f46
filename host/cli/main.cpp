#include <cstdio>
int main() { std::puts("modevisor: CLI under construction"); return 0; }
