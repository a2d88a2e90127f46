/* hello: multiboot handoff, cmdline, memory info, serial output. */
#include "rt.h"

int main(void)
{
  const struct mb_info *mi = (const struct mb_info *)mb_info;
  CHECK_EQ(mb_magic, 0x2BADB002);
  printf("cmdline: [%s]\n", mb_cmdline());
  if (mb_magic == 0x2BADB002 && (mi->flags & 1)) {
    printf("mem_lower: %u KiB\n", mi->mem_lower);
    printf("mem_upper: %u KiB\n", mi->mem_upper);
    printf("memory: %u MiB (rounded up)\n", (mi->mem_upper + 1024 + 1023) / 1024);
  } else {
    CHECK(0 && "no memory info");
  }
  /* The memory map must contain an available region covering 1 MiB..1 MiB+mem_upper. */
  int found = 0;
  if (mi->flags & (1u << 6)) {
    uint32_t p = mi->mmap_addr, end = mi->mmap_addr + mi->mmap_length;
    while (p < end) {
      const struct mb_mmap_entry *e = (const struct mb_mmap_entry *)p;
      if (e->type == 1 && e->addr <= 0x100000 && e->addr + e->len >= 0x100000 + (uint64_t)mi->mem_upper * 1024)
        found = 1;
      p += e->size + 4;
    }
  }
  CHECK(found);
  CHECK_EQ(cmdline_ulong("n", 7), 42);
  /* QEMU fw_cfg: selector 0 (signature) reads "QEMU" from the data port */
  char sig[5];
  outw(0x510, 0x0000);
  for (int i = 0; i < 4; i++)
    sig[i] = (char)inb(0x511);
  sig[4] = 0;
  printf("fw_cfg signature: %s\n", sig);
  CHECK(!strcmp(sig, "QEMU"));
  printf("hello from %s\n", "hello");
  rt_finish();
}
