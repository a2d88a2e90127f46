# modevisor plugin API, for plugins built outside the modevisor tree.
#
#   find_package(modevisor-plugin-api REQUIRED PATHS <modevisor>/plugin-api/cmake)
#   modevisor_add_plugin_module(my_target NAME my-plugin SOURCES plugin.cpp)
#
# Works from the source tree (nothing to install) and from an installed
# prefix (<prefix>/share/cmake/modevisor-plugin-api).  Provides:
#   modevisor::plugin_api            headers-only target to link
#   MODEVISOR_PLUGIN_ABI_VERSION     the ABI version these headers speak
#   modevisor_add_plugin_module()    builds a loadable plugin the way the host expects
include(CMakeFindDependencyMacro)
find_dependency(Boost 1.74)  # plugin.hpp uses Boost.Config for the export macro

if(EXISTS ${CMAKE_CURRENT_LIST_DIR}/../include/modevisor/api/abi.hpp)
  get_filename_component(_modevisor_api_include ${CMAKE_CURRENT_LIST_DIR}/../include ABSOLUTE)
else()
  get_filename_component(_modevisor_api_include ${CMAKE_CURRENT_LIST_DIR}/../../../include ABSOLUTE)
endif()
if(NOT EXISTS ${_modevisor_api_include}/modevisor/api/abi.hpp)
  message(FATAL_ERROR "modevisor-plugin-api: headers not found next to ${CMAKE_CURRENT_LIST_FILE}")
endif()

include(${CMAKE_CURRENT_LIST_DIR}/modevisor-plugin-apiAbi.cmake)
modevisor_read_abi_version(${_modevisor_api_include}/modevisor/api/abi.hpp MODEVISOR_PLUGIN_ABI_VERSION)

if(NOT TARGET modevisor::plugin_api)
  add_library(modevisor::plugin_api INTERFACE IMPORTED)
  set_target_properties(modevisor::plugin_api PROPERTIES
    INTERFACE_INCLUDE_DIRECTORIES ${_modevisor_api_include}
    INTERFACE_LINK_LIBRARIES Boost::headers
    INTERFACE_COMPILE_FEATURES cxx_std_20)
endif()

# modevisor_add_plugin_module(<target> NAME <file name without .so> SOURCES <src>... [LIBS <lib>...])
# A MODULE library named <NAME>.so (no "lib" prefix), exporting only the three
# entry points, refusing unresolved symbols at link time.
function(modevisor_add_plugin_module target)
  cmake_parse_arguments(P "" "NAME" "SOURCES;LIBS" ${ARGN})
  if(NOT P_NAME OR NOT P_SOURCES)
    message(FATAL_ERROR "modevisor_add_plugin_module(${target}): NAME and SOURCES are required")
  endif()
  add_library(${target} MODULE ${P_SOURCES})
  target_link_libraries(${target} PRIVATE modevisor::plugin_api ${P_LIBS})
  set_target_properties(${target} PROPERTIES
    PREFIX "" OUTPUT_NAME ${P_NAME}
    POSITION_INDEPENDENT_CODE ON
    CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  target_link_options(${target} PRIVATE -Wl,--no-undefined)
endfunction()
