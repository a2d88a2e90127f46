// Helpers shared by the config tests: throwaway folders with YAML in them and
// environment variables set for one test only.
#pragma once

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <unistd.h>

#include "common/errors.hpp"

namespace modevisor::host::testing {

// A fresh folder under the system temp dir, removed when the test ends.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    const std::string test = info ? std::string(info->test_suite_name()) + "." + info->name() : "test";
    path_ = std::filesystem::temp_directory_path() /
            ("modevisor-" + test + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path_);
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

  std::filesystem::path write(const std::string& name, const std::string& text) const {
    const auto file = path_ / name;
    std::filesystem::create_directories(file.parent_path());
    std::ofstream(file) << text;
    return file;
  }

 private:
  std::filesystem::path path_;
};

// Sets (or unsets) an environment variable, restoring the old value afterwards.
class ScopedEnv {
 public:
  ScopedEnv(std::string name, const std::optional<std::string>& value) : name_(std::move(name)) {
    if (const char* old = std::getenv(name_.c_str())) old_ = old;
    if (value) ::setenv(name_.c_str(), value->c_str(), 1);
    else ::unsetenv(name_.c_str());
  }
  ~ScopedEnv() {
    if (old_) ::setenv(name_.c_str(), old_->c_str(), 1);
    else ::unsetenv(name_.c_str());
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  std::string name_;
  std::optional<std::string> old_;
};

// Runs `load` and returns the InputError it must throw; fails the test otherwise.
template <typename Load>
InputError expect_input_error(Load&& load) {
  try {
    load();
  } catch (const InputError& e) {
    return e;
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected InputError, got another exception: " << e.what();
    return InputError("", 0, 0, "");
  }
  ADD_FAILURE() << "expected InputError, nothing was thrown";
  return InputError("", 0, 0, "");
}

}  // namespace modevisor::host::testing

// An InputError at this line and column whose message contains `text`.
#define EXPECT_ERROR_AT(error, expected_line, expected_column, text)        \
  do {                                                                      \
    const ::modevisor::host::InputError& e_ = (error);                      \
    EXPECT_EQ(e_.line(), expected_line) << e_.what();                       \
    EXPECT_EQ(e_.column(), expected_column) << e_.what();                   \
    EXPECT_THAT(e_.message(), ::testing::HasSubstr(text)) << e_.what();     \
  } while (0)
