# Builds the plugin SDK example as a plugin author would: a separate CMake
# project that finds plugin-api from the source tree, nothing installed.
# Then drops the built .so into an empty directory and lets the registry list it.
#
# Inputs (-D): EXAMPLE_SOURCE_DIR PLUGIN_API_DIR WORK_DIR GENERATOR CXX_COMPILER CHECKER MODEVISOR_CLI
foreach(var EXAMPLE_SOURCE_DIR PLUGIN_API_DIR WORK_DIR GENERATOR CXX_COMPILER CHECKER MODEVISOR_CLI)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "build_out_of_tree.cmake: ${var} is not set")
  endif()
endforeach()

function(run_step what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message("${out}")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "${what} failed (${result})")
  endif()
endfunction()

file(REMOVE_RECURSE ${WORK_DIR})
set(build_dir ${WORK_DIR}/build)
set(drop_dir ${WORK_DIR}/plugins)

run_step("configuring the example out of tree"
  ${CMAKE_COMMAND} -G ${GENERATOR} -S ${EXAMPLE_SOURCE_DIR} -B ${build_dir}
  -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DMODEVISOR_PLUGIN_API_DIR=${PLUGIN_API_DIR})
run_step("building the example" ${CMAKE_COMMAND} --build ${build_dir} -j 1)

file(GLOB built ${build_dir}/*.so)
list(LENGTH built count)
if(NOT count EQUAL 1)
  message(FATAL_ERROR "expected one plugin .so in ${build_dir}, found: ${built}")
endif()
file(MAKE_DIRECTORY ${drop_dir})
file(COPY ${built} DESTINATION ${drop_dir})

run_step("listing the dropped-in plugin" ${CHECKER} ${drop_dir} example-bt BT)

# And as an operator sees it: `modevisor plugins --plugin-dir DIR`.
execute_process(COMMAND ${MODEVISOR_CLI} --plugin-dir ${drop_dir} --log-dir ${WORK_DIR}/logs plugins
  RESULT_VARIABLE result OUTPUT_VARIABLE listing ERROR_VARIABLE errors)
message("${listing}${errors}")
if(NOT result EQUAL 0)
  message(FATAL_ERROR "modevisor plugins failed (${result})")
endif()
if(NOT listing MATCHES "example-bt [0-9.]+  \\[BT\\]  ABI [0-9]+")
  message(FATAL_ERROR "modevisor plugins does not list example-bt as a BT plugin")
endif()
if(listing MATCHES "skipped")
  message(FATAL_ERROR "modevisor plugins reports a problem with the dropped-in plugin")
endif()
