# Reads kAbiVersion out of abi.hpp, so CMake and C++ cannot disagree.
function(modevisor_read_abi_version abi_header out_var)
  file(STRINGS ${abi_header} _line REGEX "kAbiVersion = [0-9]+")
  if(NOT _line MATCHES "kAbiVersion = ([0-9]+)")
    message(FATAL_ERROR "modevisor-plugin-api: no kAbiVersion in ${abi_header}")
  endif()
  set(${out_var} ${CMAKE_MATCH_1} PARENT_SCOPE)
endfunction()
