# The package version is the plugin ABI version: find_package(modevisor-plugin-api 1)
# accepts only headers that speak ABI 1, since a plugin built against another
# ABI is refused by the host.
include(${CMAKE_CURRENT_LIST_DIR}/modevisor-plugin-apiAbi.cmake)
if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/../include/modevisor/api/abi.hpp)
  modevisor_read_abi_version(${CMAKE_CURRENT_LIST_DIR}/../include/modevisor/api/abi.hpp PACKAGE_VERSION)
else()
  modevisor_read_abi_version(${CMAKE_CURRENT_LIST_DIR}/../../../include/modevisor/api/abi.hpp PACKAGE_VERSION)
endif()

if(NOT DEFINED PACKAGE_FIND_VERSION OR PACKAGE_FIND_VERSION_MAJOR STREQUAL PACKAGE_VERSION)
  set(PACKAGE_VERSION_COMPATIBLE TRUE)
  if(PACKAGE_FIND_VERSION_MAJOR STREQUAL PACKAGE_VERSION)
    set(PACKAGE_VERSION_EXACT TRUE)
  endif()
else()
  set(PACKAGE_VERSION_COMPATIBLE FALSE)
endif()
