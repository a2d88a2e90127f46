// CPUID answers and the vCPU's own MSRs, without a VM.
#include <gtest/gtest.h>

#include <cstring>
#include <string>

#include "cpu_identity.hpp"

namespace modevisor::bt {
namespace {

std::string vendor_of(const CpuidAnswer& a, bool hypervisor_order) {
  char s[13] = {};
  const std::uint32_t regs[3] = {a.ebx, hypervisor_order ? a.ecx : a.edx, hypervisor_order ? a.edx : a.ecx};
  std::memcpy(s, regs, 12);
  return s;
}

TEST(BtCpuIdentity, OwnModelNamesTheEngineAndEachCpu) {
  CpuidModel model;
  EXPECT_EQ(vendor_of(model.answer(0, 0, 0), false), "GenuineIntel");
  EXPECT_EQ(vendor_of(model.answer(0x40000000, 0, 0), true), "ModevisorBT ");
  const CpuidAnswer one = model.answer(1, 0, 3);
  EXPECT_EQ(one.ebx >> 24, 3u);            // initial APIC ID
  EXPECT_TRUE(one.ecx & (1u << 31));       // hypervisor present
  EXPECT_TRUE(one.edx & (1u << 26));       // SSE2
  EXPECT_FALSE(one.edx & (1u << 28));      // no HTT
  EXPECT_TRUE(model.answer(0x80000001, 0, 0).edx & (1u << 20));  // NX
  // Leaf 7: SMEP, SMAP, UMIP and RDPID, which the engine enforces; RDTSCP in 0x80000001.
  EXPECT_EQ(model.answer(0, 0, 0).eax, 7u);
  const CpuidAnswer seven = model.answer(7, 0, 0);
  EXPECT_EQ(seven.eax, 0u);
  EXPECT_EQ(seven.ebx, (1u << 7) | (1u << 20));
  EXPECT_EQ(seven.ecx, (1u << 2) | (1u << 22));
  EXPECT_EQ(seven.edx, 1u << 29);  // ARCH_CAPABILITIES, which says RDCL_NO
  const CpuidAnswer sub1 = model.answer(7, 1, 0);
  EXPECT_EQ(sub1.eax | sub1.ebx | sub1.ecx | sub1.edx, 0u);
  EXPECT_TRUE(model.answer(0x80000001, 0, 0).edx & (1u << 27));  // RDTSCP
  EXPECT_TRUE(model.answer(0x80000001, 0, 0).edx & (1u << 29));  // LM: BT64 runs long mode
  EXPECT_TRUE(model.answer(0x80000001, 0, 0).edx & (1u << 11));  // SYSCALL
  const CpuFeatures& f = model.features();
  EXPECT_TRUE(f.smep && f.smap && f.umip && f.rdpid && f.rdtscp);
  EXPECT_EQ(f.cr4_mask(), 0x7ffu | (1u << 11) | (1u << 20) | (1u << 21));
}

// The features follow the model: kept where the engine enforces them, absent
// when the model lacks them (or its maximum leaf hides them).
TEST(BtCpuIdentity, FeaturesFollowTheVmModel) {
  api::CpuidLeaf basic;
  basic.eax = 7;
  api::CpuidLeaf leaf7;
  leaf7.function = 7;
  leaf7.indexed = true;
  leaf7.ebx = (1u << 7) | (1u << 5);  // SMEP, AVX2
  leaf7.ecx = 1u << 22;               // RDPID
  api::CpuidLeaf ext_max;
  ext_max.function = 0x80000000;
  ext_max.eax = 0x80000001;
  api::CpuidLeaf ext;
  ext.function = 0x80000001;
  ext.edx = 1u << 27;  // RDTSCP
  CpuidModel model;
  const auto hidden = model.set({basic, leaf7, ext_max, ext});
  EXPECT_EQ(hidden, std::vector<std::string>{"leaf 0x7 ebx bit 5"});
  CpuFeatures f = model.features();
  EXPECT_TRUE(f.smep);
  EXPECT_FALSE(f.smap);
  EXPECT_FALSE(f.umip);
  EXPECT_TRUE(f.rdpid);
  EXPECT_TRUE(f.rdtscp);
  EXPECT_EQ(f.cr4_mask(), 0x7ffu | (1u << 20));
  basic.eax = 1;  // leaf 7 beyond the maximum: not offered
  model.set({basic, leaf7});
  f = model.features();
  EXPECT_FALSE(f.smep || f.smap || f.umip || f.rdpid || f.rdtscp || f.tsc_aux());
  EXPECT_EQ(f.cr4_mask(), 0x7ffu);
}

TEST(BtCpuIdentity, VmModelLosesWhatTheEngineDoesNotImplement) {
  api::CpuidTable table;
  api::CpuidLeaf leaf1;
  leaf1.function = 1;
  leaf1.eax = 0x000306a9;
  leaf1.ebx = 0x07000800;                        // APIC ID 7 in the model: replaced per vCPU
  leaf1.ecx = (1u << 28) | (1u << 31);           // AVX (not implemented) + hypervisor
  leaf1.edx = (1u << 26) | (1u << 0);
  table.push_back(leaf1);
  api::CpuidLeaf leaf7;
  leaf7.function = 7;
  leaf7.indexed = true;
  leaf7.ebx = 1u << 5;  // AVX2
  table.push_back(leaf7);
  CpuidModel model;
  const auto hidden = model.set(table);
  ASSERT_EQ(hidden.size(), 2u);
  EXPECT_EQ(hidden[0], "leaf 0x1 ecx bit 28");
  EXPECT_EQ(hidden[1], "leaf 0x7 ebx bit 5");
  const CpuidAnswer one = model.answer(1, 0, 2);
  EXPECT_EQ(one.eax, 0x000306a9u);
  EXPECT_EQ(one.ebx, 0x02000800u);
  EXPECT_EQ(one.ecx, 1u << 31);
  EXPECT_EQ(one.edx, (1u << 26) | 1u);
  EXPECT_EQ(model.answer(7, 0, 0).ebx, 0u);
  // A leaf the model does not have reads as zeros, not as the engine's own.
  EXPECT_EQ(model.answer(0x40000000, 0, 0).eax, 0u);
}

TEST(BtMsrFile, DefaultsWritesAndUnknownIndices) {
  MsrFile msrs(1000);
  EXPECT_EQ(msrs.read(0x277, 1000).value(), 0x0007040600070406ull);  // PAT power-on value
  EXPECT_EQ(msrs.read(0x1a0, 1000).value(), 1u);
  EXPECT_EQ(msrs.read(0x174, 1000).value(), 0u);
  EXPECT_FALSE(msrs.write(0x174, 0x10, 1000));
  EXPECT_FALSE(msrs.write(0x176, 0xc0001000, 1000));
  EXPECT_FALSE(msrs.write(0x174, 0x60, 1000));  // overwrites, not a second entry
  EXPECT_EQ(msrs.read(0x174, 1000).value(), 0x60u);
  EXPECT_EQ(msrs.saved().size(), 2u);
  // Not this file's: #GP(0) (the APIC base and EFER are the vCPU's, others unknown).
  EXPECT_FALSE(MsrFile::holds(0x1b));
  EXPECT_FALSE(MsrFile::holds(0xc0000080));
  ASSERT_FALSE(msrs.read(0xc0000081, 1000).ok());
  EXPECT_EQ(msrs.read(0xc0000081, 1000).fault(), Fault::gp(0));
  EXPECT_EQ(msrs.write(0x8b, 1, 1000), Fault::gp(0));
}

// IA32_TSC_AUX (RDTSCP's ECX, RDPID's result): 0 until written, bits 63:32
// reserved, saved with the other written MSRs (so snapshots and migration carry it).
TEST(BtMsrFile, TscAuxIsKeptAndSaved) {
  MsrFile msrs(0);
  EXPECT_TRUE(MsrFile::holds(MsrFile::kTscAux));
  EXPECT_EQ(msrs.tsc_aux(), 0u);
  EXPECT_EQ(msrs.read(MsrFile::kTscAux, 0).value(), 0u);
  EXPECT_FALSE(msrs.write(MsrFile::kTscAux, 0x89abcdef, 0));
  EXPECT_EQ(msrs.tsc_aux(), 0x89abcdefu);
  EXPECT_EQ(msrs.write(MsrFile::kTscAux, 1ull << 32, 0), Fault::gp(0));
  EXPECT_EQ(msrs.tsc_aux(), 0x89abcdefu);
  ASSERT_EQ(msrs.saved().size(), 1u);
  EXPECT_EQ(msrs.saved()[0].index, MsrFile::kTscAux);
  MsrFile restored(0);
  restored.load(msrs.saved(), 0);
  EXPECT_EQ(restored.tsc_aux(), 0x89abcdefu);
}

// RDCL_NO: the guest kernel need not isolate its page tables (PTI) under
// the engine; the MSR cannot be written.
TEST(BtMsrFile, ArchCapabilitiesSayRdclNoAndAreReadOnly) {
  MsrFile msrs(0);
  ASSERT_TRUE(MsrFile::holds(MsrFile::kArchCaps));
  EXPECT_EQ(msrs.read(MsrFile::kArchCaps, 0).value(), 1u);
  EXPECT_EQ(msrs.write(MsrFile::kArchCaps, 0, 0), Fault::gp(0));
  EXPECT_TRUE(msrs.saved().empty());
}

TEST(BtMsrFile, TscFollowsTheHostClockFromTheWrittenValue) {
  MsrFile msrs(5000);  // guest TSC 0 at host TSC 5000
  EXPECT_EQ(msrs.tsc(5000), 0u);
  EXPECT_EQ(msrs.read(MsrFile::kTsc, 5600).value(), 600u);
  EXPECT_FALSE(msrs.write(MsrFile::kTsc, 1000000, 6000));
  EXPECT_EQ(msrs.tsc(6500), 1000500u);
  EXPECT_TRUE(msrs.saved().empty());  // the TSC is saved from tsc(), not as a written entry
  // A loaded state continues from its saved TSC.
  MsrFile restored(0);
  restored.load({{0x175, 0x9000}, {MsrFile::kTsc, 42}}, 7000);
  EXPECT_EQ(restored.tsc(7010), 52u);
  EXPECT_EQ(restored.read(0x175, 7010).value(), 0x9000u);
}

}  // namespace
}  // namespace modevisor::bt
