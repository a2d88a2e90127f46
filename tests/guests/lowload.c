/* lowload: a multiboot kernel loaded below 1 MiB (at GUEST_LOAD_ADDRESS,
 * 0xa000 or 0x8000), inside the area where modevisor's loader used to keep
 * its multiboot information (0x8000-0x10000).  The loader must place the
 * information (the structure, the command line, the memory map, the boot
 * loader name) clear of the kernel and load the kernel intact: 24 KiB of
 * initialized data are checked word by word, and every address the
 * information gives must lie outside the image.  The transcript names no
 * address, so both load addresses print the same. */
#include "rt.h"

extern char __image_start[], __image_end[];

#define PATTERN_WORDS (24 * 1024 / 4)
#define PATTERN(i) ((uint32_t)(i) * 2654435761u ^ 0x5a5a1234u)
#define P4(i) PATTERN(i), PATTERN(i + 1), PATTERN(i + 2), PATTERN(i + 3)
#define P16(i) P4(i), P4(i + 4), P4(i + 8), P4(i + 12)
#define P64(i) P16(i), P16(i + 16), P16(i + 32), P16(i + 48)
#define P256(i) P64(i), P64(i + 64), P64(i + 128), P64(i + 192)
#define P1024(i) P256(i), P256(i + 256), P256(i + 512), P256(i + 768)
static volatile uint32_t pattern[PATTERN_WORDS] = {
    P1024(0), P1024(1024), P1024(2048), P1024(3072), P1024(4096), P1024(5120)};

static int outside_image(uint32_t start, uint32_t size)
{
  return start + size <= (uint32_t)__image_start || start >= (uint32_t)__image_end;
}

static unsigned pattern_errors(void)
{
  unsigned bad = 0;
  for (unsigned i = 0; i < PATTERN_WORDS; i++)
    bad += pattern[i] != PATTERN(i);
  return bad;
}

int main(void)
{
  const struct mb_info *mi = (const struct mb_info *)mb_info;
  CHECK_EQ((uint32_t)__image_start, GUEST_LOAD_ADDRESS);
  CHECK((uint32_t)__image_end <= 0x9f000);
  printf("image below 1 MiB, inside 0x8000-0x10000: %s\n",
         (uint32_t)__image_start < 0x10000 && (uint32_t)__image_end > 0x8000 ? "yes" : "no");
  unsigned bad = pattern_errors();
  printf("initialized data words that differ: %u of %u\n", bad, PATTERN_WORDS);
  CHECK_EQ(bad, 0);

  CHECK_EQ(mb_magic, 0x2BADB002);
  CHECK(outside_image(mb_info, sizeof *mi));
  /* The arguments only: the image's file name differs between the two builds. */
  const char *args = mb_cmdline();
  while (*args && *args != ' ')
    args++;
  printf("cmdline after the file name: [%s]\n", args);
  if (mi->flags & (1u << 2))
    CHECK(outside_image(mi->cmdline, strlen((const char *)mi->cmdline) + 1));
  CHECK(mi->flags & 1);
  printf("mem_lower: %u KiB\nmem_upper: %u KiB\n", mi->mem_lower, mi->mem_upper);
  int found = 0;
  if (mi->flags & (1u << 6)) {
    CHECK(outside_image(mi->mmap_addr, mi->mmap_length));
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
  /* Still intact after the guest has run on its stack and bss. */
  CHECK_EQ(pattern_errors(), 0);
  printf("hello from a kernel below 1 MiB\n");
  rt_finish();
}
