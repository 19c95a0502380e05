// SPDX-License-Identifier: GPL-2.0
/* The module the kernel boot test loads: it says it was loaded, nothing else. */
#include <linux/init.h>
#include <linux/module.h>

static int __init hsmtest_init(void)
{
	pr_info("hsmtest: loaded\n");
	return 0;
}
module_init(hsmtest_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("meta-hsmsign module signature test");
