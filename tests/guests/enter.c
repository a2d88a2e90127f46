/* enter: ENTER with nesting levels 0, 1, 2, 3 and 31 (32-bit operand size)
 * and 2 (16-bit operand size, which writes only BP and pushes words): the
 * frame pointers copied from the enclosing frames at [EBP - n*size], the new
 * frame pointer, EBP and ESP afterwards, then LEAVE.  Run on a private stack
 * whose enclosing "frames" hold recognisable values; everything is printed
 * relative to that stack, so the transcript names no address. */
#include "rt.h"

/* 64 KiB-aligned, so a 16-bit frame pointer (TOP's low word is 0x1000 minus
 * a little) never looks like a fill word, wherever the image is linked. */
static uint32_t stack[1024] __attribute__((aligned(65536)));
static volatile uint32_t r_esp, r_ebp, r_esp_after_leave, r_ebp_after_leave;

#define TOP ((uint32_t)(stack + 1024))

/* Each case: ESP = g_esp, EBP = g_ebp, the ENTER, ESP/EBP recorded, LEAVE,
 * recorded again, then the C stack back. */
static volatile uint32_t g_esp, g_ebp;
#define ENTER_CASE(name, insn)                                                                      \
  static void name(void)                                                                            \
  {                                                                                                 \
    __asm__ volatile("pushl %%ebp\n\t"                                                              \
                     "movl %%esp, %%edi\n\t"                                                        \
                     "movl g_esp, %%esp\n\t"                                                        \
                     "movl g_ebp, %%ebp\n\t" insn "\n\t"                                            \
                     "movl %%esp, r_esp\n\t"                                                        \
                     "movl %%ebp, r_ebp\n\t"                                                        \
                     "leave\n\t"                                                                    \
                     "movl %%esp, r_esp_after_leave\n\t"                                            \
                     "movl %%ebp, r_ebp_after_leave\n\t"                                            \
                     "movl %%edi, %%esp\n\t"                                                        \
                     "popl %%ebp"                                                                   \
                     : : : "edi", "memory");                                                        \
  }
ENTER_CASE(enter_0, "enter $8, $0")
ENTER_CASE(enter_1, "enter $8, $1")
ENTER_CASE(enter_2, "enter $12, $2")
ENTER_CASE(enter_3, "enter $16, $3")
ENTER_CASE(enter_31, "enter $4, $31")
ENTER_CASE(enter_33, "enter $4, $33") /* level is taken mod 32: 1 */
ENTER_CASE(enter16_2, "enterw $6, $2")

static void run(const char *name, void (*fn)(void), int words16)
{
  for (unsigned i = 0; i < 1024; i++)
    stack[i] = 0xf0008000u | i; /* enclosing frames: recognisable, neither half a 16-bit frame pointer */
  g_esp = TOP - 64 * 4;
  g_ebp = TOP - 16 * 4;
  fn();
  printf("%s: ESP %d EBP %d (from the start), after LEAVE ESP %d EBP %s\n", name, (int)(r_esp - g_esp),
         (int)(r_ebp - g_esp), (int)(r_esp_after_leave - g_esp),
         r_ebp_after_leave == g_ebp ? "restored" : "changed");
  /* The pushed words between the new ESP and the old one, as offsets from
   * the stack top when they point into it, else as they are. */
  printf("%s: pushed", name);
  const uint8_t *p = (const uint8_t *)(r_esp), *end = (const uint8_t *)g_esp;
  int n = 0;
  while (p < end && n < 40) {
    uint32_t v = words16 ? *(const uint16_t *)p : *(const uint32_t *)p;
    if (!words16 && v >= (uint32_t)stack && v <= TOP)
      printf(" top-%u", (unsigned)(TOP - v));
    else if (words16 && (uint16_t)((TOP & 0xffff) - v) <= sizeof stack) /* a 16-bit frame pointer */
      printf(" top-%u", (unsigned)(uint16_t)((TOP & 0xffff) - v));
    else
      printf(" %x", v);
    p += words16 ? 2 : 4;
    n++;
  }
  printf("\n");
}

int main(void)
{
  run("enter 8, 0", enter_0, 0);
  run("enter 8, 1", enter_1, 0);
  run("enter 12, 2", enter_2, 0);
  run("enter 16, 3", enter_3, 0);
  run("enter 4, 31", enter_31, 0);
  run("enter 4, 33", enter_33, 0);
  run("enterw 6, 2", enter16_2, 1);
  rt_finish();
}
